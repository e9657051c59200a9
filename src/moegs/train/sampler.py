"""Which training view a step sees: epochs of shuffled views, stateless so a resumed run draws the same."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import View

__all__ = ["view_order", "sample_view", "sample_view_windowed"]


def view_order(n: int, seed: int, epoch: int) -> Tensor:
    """A permutation of ``n`` views for ``epoch`` (depends only on ``seed`` and ``epoch``)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # cpu: a seeded CPU generator; indices into a Python list


def sample_view(views: list[View], seed: int, sample: int) -> View:
    """The ``sample``-th view drawn: epochs of shuffled ``views``, a new permutation per epoch."""
    n = len(views)
    return views[int(view_order(n, seed, sample // n)[sample % n])]


def sample_view_windowed(views: list[View], seed: int, sample: int, window: int, repeats: int) -> View:
    """The ``sample``-th view drawn in windows: each cycle's permutation of ``views`` is cut into
    windows of ``window`` views, and a window's views are drawn ``repeats`` times each, in a shuffled
    order, before the next window's. Every view is drawn ``repeats`` times per cycle, as in ``repeats``
    epochs of :func:`sample_view`, but a view's draws fall within ``window * repeats`` samples, so a
    cache of ``window`` views serves all but the first of them."""
    n, window, repeats = len(views), max(1, window), max(1, repeats)
    cycle, pos = divmod(sample, n * repeats)
    order = view_order(n, seed, cycle)
    w, k = divmod(pos, window * repeats)
    members = order[w * window:(w + 1) * window]
    g = torch.Generator().manual_seed(seed * 1_000_003 + cycle * 7919 + w + 1)
    draws = members.repeat(repeats)[torch.randperm(len(members) * repeats, generator=g)]  # cpu: indices into a list
    return views[int(draws[k])]
