"""Which training view a step sees: epochs of shuffled views, stateless so a resumed run draws the same."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import View

__all__ = ["view_order", "sample_view"]


def view_order(n: int, seed: int, epoch: int) -> Tensor:
    """A permutation of ``n`` views for ``epoch`` (depends only on ``seed`` and ``epoch``)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # cpu: a seeded CPU generator; indices into a Python list


def sample_view(views: list[View], seed: int, sample: int) -> View:
    """The ``sample``-th view drawn: epochs of shuffled ``views``, a new permutation per epoch."""
    n = len(views)
    return views[int(view_order(n, seed, sample // n)[sample % n])]
