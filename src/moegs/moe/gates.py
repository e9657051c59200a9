"""Gaussian-level gates: a learnable responsibility in ``(0, 1)`` per Gaussian of each expert.

A gate belongs to one expert. Its per-Gaussian parameters live in a
``ParameterDict`` (``gate.per_gaussian``) whose entries have the same first
dimension ``N`` as ``expert.splats``, so the generic densification/pruning ops
of :mod:`moegs.train.ops` applied to both dicts with the same mask keep them
aligned (see :func:`moegs.moe.prune.remove_gaussians`).

Three gates share one interface; each returns ``[N, C]`` values (``C = gate.channels``):

- :class:`LinearGate`: ``g_i(t) = sigmoid(w_i + (t - 1/2) f_i)`` (``C = 1``), a
  static logit plus a term linear in time; its extremes over ``t`` in ``[0, 1]``
  are at the endpoints, which gate-aware pruning uses.
- :class:`MLPGate`: ``g_i(t) = sigmoid(MLP([x_i(t) / extent, gamma(t), z_i]))`` (``C = 1``) with the
  Gaussian's deformed centre ``x_i(t)``, a Fourier time encoding ``gamma(t)`` and a
  learnable per-Gaussian feature ``z_i``.
- :class:`PublishedGate` (the authors' code): three raw channels ``(w_i, v_i, t f_i)`` (``C = 3``),
  a static weight, a weight the router's decoder combines with the ray, and a time feature
  multiplied by ``t``; see :mod:`moegs.moe.router` (``"published"``).

The gate values are what the mixture splats (as ``extras``) with the expert's
Gaussians, so a pixel's gate map is the opacity-weighted gate along its ray.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from ..experts import ParamGroup
from ..encoding import time_features
from ..gaussians import GaussianSet

__all__ = ["GATES", "Gate", "GateKind", "LinearGate", "MLPGate", "PublishedGate", "build_gate"]

GateKind = Literal["linear", "mlp", "published"]
GATES: tuple[str, ...] = ("linear", "mlp", "published")


class Gate(Protocol):
    """Per-Gaussian gate of one expert."""

    per_gaussian: nn.ParameterDict  # entries [N, ...], aligned with expert.splats
    channels: int  # C, the number of values per Gaussian

    def __call__(self, gaussians: GaussianSet, t: float) -> Tensor:
        """``[N, C]`` gate values of the expert's Gaussians ``gaussians`` at time ``t``."""

    def param_groups(self, prefix: str, lr: float, lr_net: float) -> dict[str, ParamGroup]:
        """Optimiser groups keyed ``prefix + name``; per-Gaussian ones use ``lr``, networks ``lr_net``."""


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class LinearGate(nn.Module):
    """``g_i(t) = sigmoid(w_i + (t - 1/2) f_i)``; ``w`` starts at ``logit(init)``, ``f`` at zero."""

    channels = 1

    def __init__(self, num_gaussians: int, init: float = 0.5) -> None:
        super().__init__()
        self.per_gaussian = nn.ParameterDict({
            "w": nn.Parameter(torch.full((num_gaussians,), _logit(init))),  # [N]  # cpu: built with the module, moved by .to(device)
            "f": nn.Parameter(torch.zeros(num_gaussians)),  # [N]  # cpu: built with the module, moved by .to(device)
        })

    def logits(self, t: float) -> Tensor:
        """``[N]`` gate logits at time ``t``."""
        return self.per_gaussian["w"] + (float(t) - 0.5) * self.per_gaussian["f"]

    def forward(self, gaussians: GaussianSet, t: float) -> Tensor:
        return torch.sigmoid(self.logits(t))[:, None]

    def param_groups(self, prefix: str, lr: float, lr_net: float) -> dict[str, ParamGroup]:
        return {prefix + k: ParamGroup([p], lr) for k, p in self.per_gaussian.items()}


class MLPGate(nn.Module):
    """``g_i(t) = sigmoid(MLP([x_i(t) / extent, gamma(t), z_i]))`` with a per-Gaussian feature ``z`` ``[N, F]``.

    The output layer starts at zero weights and bias ``logit(init)``, so every gate starts at ``init``.
    """

    channels = 1

    def __init__(self, num_gaussians: int, extent: float, init: float = 0.5, feature_dim: int = 8,
                 hidden: int = 32, time_freqs: int = 2) -> None:
        super().__init__()
        self.extent = float(extent)
        self.time_freqs = time_freqs
        self.per_gaussian = nn.ParameterDict({
            "z": nn.Parameter(0.1 * torch.randn(num_gaussians, feature_dim)),  # [N, F]  # cpu: built with the module, moved by .to(device)
        })
        d_in = 3 + 1 + 2 * time_freqs + feature_dim
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, _logit(init))

    def forward(self, gaussians: GaussianSet, t: float) -> Tensor:
        z = self.per_gaussian["z"]
        x = gaussians.means.detach() / self.extent
        enc = time_features(float(t), self.time_freqs).to(z).expand(z.shape[0], -1)
        return torch.sigmoid(self.net(torch.cat((x, enc, z), dim=-1)))

    def param_groups(self, prefix: str, lr: float, lr_net: float) -> dict[str, ParamGroup]:
        groups = {prefix + k: ParamGroup([p], lr) for k, p in self.per_gaussian.items()}
        groups[prefix + "net"] = ParamGroup(list(self.net.parameters()), lr_net)
        return groups


class PublishedGate(nn.Module):
    """The authors' per-Gaussian gate: ``[N, 3]`` values ``(w_i, v_i, t f_i)``, no activation.

    ``w`` (the static weight, added to the decoder's output) and ``v`` (the weight the decoder sees
    with the ray) start at ``init``, the time feature ``f`` at zero (the published initialisation,
    ``init_mixprob = 0.9``).
    """

    channels = 3

    def __init__(self, num_gaussians: int, init: float = 0.9) -> None:
        super().__init__()
        self.per_gaussian = nn.ParameterDict({
            "w": nn.Parameter(torch.full((num_gaussians,), float(init))),  # [N]  # cpu: built with the module, moved by .to(device)
            "v": nn.Parameter(torch.full((num_gaussians,), float(init))),  # [N]  # cpu: built with the module, moved by .to(device)
            "f": nn.Parameter(torch.zeros(num_gaussians)),  # [N]  # cpu: built with the module, moved by .to(device)
        })

    def forward(self, gaussians: GaussianSet, t: float) -> Tensor:
        g = self.per_gaussian
        return torch.stack((g["w"], g["v"], float(t) * g["f"]), dim=-1)

    def param_groups(self, prefix: str, lr: float, lr_net: float) -> dict[str, ParamGroup]:
        return {prefix + k: ParamGroup([p], lr) for k, p in self.per_gaussian.items()}


def build_gate(kind: GateKind, num_gaussians: int, *, extent: float, init: float = 0.5, feature_dim: int = 8,
               hidden: int = 32, time_freqs: int = 2) -> nn.Module:
    """A new gate of ``kind`` for an expert with ``num_gaussians`` Gaussians, every gate value at ``init``
    (for ``"published"``: its ``w`` and ``v`` channels)."""
    if kind == "published":
        return PublishedGate(num_gaussians, init)
    if kind == "linear":
        return LinearGate(num_gaussians, init)
    if kind == "mlp":
        return MLPGate(num_gaussians, extent, init, feature_dim, hidden, time_freqs)
    raise ValueError(f"unknown gate {kind!r}; choose from {', '.join(GATES)}")
