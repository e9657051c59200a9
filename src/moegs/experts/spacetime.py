"""Spacetime Gaussians (Li et al., CVPR 2024), with SH colour instead of feature splatting (as MoE-GS uses them).

Each Gaussian lives around its own temporal centre ``μ_t`` (``τ = t - μ_t``):

- mean: a cubic polynomial ``x(t) = x + a τ + b τ² + c τ³`` (``motion`` holds ``[a | b | c]``);
- rotation: linear, ``q(t) = normalize(q + ω τ)``;
- opacity: a temporal radial basis ``σ(t) = σ_s · exp(-(τ / s)²)`` with ``s = exp(t_scale)``
  (``s_τ = 1 / s²`` in the paper's ``exp(-s_τ |τ|²)`` form), so Gaussians appear and vanish.

As in the reference code the polynomial and the rotation use ``sg(τ)`` (the
temporal centre learns through the opacity only) and the loss is the
photometric one (no regulariser).

Time-aware densification: the initial points are replicated across time
(``init_time_copies`` copies whose centres are spread over the training
times); a split child draws its own temporal centre (from the parent's
temporal Gaussian, or uniformly over the time span as the reference code
does) and is re-expanded about it so that its trajectory and rotation are
the parent's; pruning removes Gaussians whose *temporal peak* opacity over
the scene's time span is negligible. Both hooks are generic: ``splats``
carries ``split_hook`` and ``max_opacity`` (see :mod:`moegs.train.ops` and
:class:`moegs.train.DefaultStrategy`).

Not reproduced: the feature-splatting colour decoder (replaced by SH), the
error-guided sampling of new Gaussians along rays, and per-frame point
clouds for initialisation (one point cloud is replicated instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import GaussianSet, init_splats, knn_mean_distance
from .base import ParamGroup, SceneInit
from .base import CanonicalConfig, splat_param_groups
from . import _motion_cpu

__all__ = ["SpacetimeConfig", "SpacetimeGaussians", "temporal_opacity_logits", "recenter_polynomial"]

_MAX_LOG_OPACITY = math.log1p(-1e-6)


def temporal_opacity_logits(opacity_logits: Tensor, tau: Tensor, t_scale: Tensor) -> Tensor:
    """Logits of ``σ_s · exp(-(τ / exp(t_scale))²)``, computed in log space.

    Args:
        opacity_logits: ``[N]`` logits of the spatial opacity ``σ_s``.
        tau: ``[N]`` ``t - μ_t``.
        t_scale: ``[N]`` log temporal scale.

    Returns:
        ``[N]`` logits (``-inf``-safe: a vanished Gaussian gets a large negative logit).
    """
    log_p = F.logsigmoid(opacity_logits) - (tau * torch.exp(-t_scale)) ** 2
    log_p = log_p.clamp_max(_MAX_LOG_OPACITY)
    return log_p - torch.log1p(-torch.exp(log_p))


def recenter_polynomial(motion: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Re-expand ``p(τ) = a τ + b τ² + c τ³`` about ``τ = Δ``: ``p(τ' + Δ) = p(Δ) + a' τ' + b' τ'² + c τ'³``.

    Args:
        motion: ``[S, 9]`` coefficients ``[a | b | c]``.
        delta: ``[S]`` shift ``Δ`` of the temporal centre.

    Returns:
        ``(p(Δ) [S, 3], motion' [S, 9])``.
    """
    a, b, c = motion[:, 0:3], motion[:, 3:6], motion[:, 6:9]
    d = delta[:, None]
    shift = a * d + b * d**2 + c * d**3
    return shift, torch.cat((a + 2 * b * d + 3 * c * d**2, b + 3 * c * d, c), dim=1)


def _split_children(parents: dict[str, Tensor], children: dict[str, Tensor], *, uniform: bool, t0: float,
                    t1: float) -> dict[str, Tensor]:
    """``split_hook``: give each child its own temporal centre and re-centre its motion there."""
    mu = parents["t_center"].repeat(2)  # [2S]
    if uniform:
        new_mu = t0 + (t1 - t0) * torch.rand_like(mu)
    else:
        std = torch.exp(parents["t_scale"]).repeat(2) / math.sqrt(2.0)  # exp(-(τ/s)²) has std s/√2
        new_mu = (mu + std * torch.randn_like(mu)).clamp(t0, t1)
    delta = new_mu - mu
    motion = parents["motion"].repeat(2, 1)
    shift, new_motion = recenter_polynomial(motion, delta)
    return {
        "t_center": new_mu,
        "means": children["means"] + shift,
        "motion": new_motion,
        "quats": children["quats"] + children["omega"] * delta[:, None],
    }


def _max_opacity(params: nn.ParameterDict, *, t0: float, t1: float) -> Tensor:
    """``max_opacity`` hook: ``[N]`` peak of ``σ(t)`` over ``t ∈ [t0, t1]``."""
    mu = params["t_center"]
    gap = torch.clamp(torch.maximum(t0 - mu, mu - t1), min=0.0)
    return torch.sigmoid(params["opacities"]) * torch.exp(-(gap * torch.exp(-params["t_scale"])) ** 2)


@dataclass
class SpacetimeLR:
    """Learning rates of the temporal parameters (the reference configs' values)."""

    # Polynomial motion, times the scene extent (0.5 x 3.5 x the initial mean rate).
    motion: float = 1.6e-4 * 0.5 * 3.5
    # Angular velocity ω.
    omega: float = 1e-4
    # Temporal centre μ_t.
    t_center: float = 1e-4
    # Log temporal scale.
    t_scale: float = 0.03


@dataclass
class SpacetimeConfig:
    """Spacetime Gaussians (SH colour). Defaults sized for a CPU."""

    name: ClassVar[str] = "spacetime"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates (max_init_points counts all time copies together).
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=12_000))
    # Copies of the initial point cloud, with temporal centres at the copies' quantiles of the training times.
    init_time_copies: int = 4
    # Initial temporal scale s (normalised time); None: 1 / init_time_copies, so neighbouring copies overlap.
    init_time_scale: float | None = None
    # A split child draws its temporal centre uniformly over the time span (the reference code)
    # instead of from its parent's temporal Gaussian.
    split_time_uniform: bool = False
    # Learning rates of the temporal parameters.
    temporal_lr: SpacetimeLR = field(default_factory=SpacetimeLR)


class SpacetimeGaussians(nn.Module):
    """Gaussians with polynomial motion, linear rotation and temporal RBF opacity.

    ``splats`` adds to the 3DGS entries ``motion [N, 9]``, ``omega [N, 4]``,
    ``t_center [N]`` and ``t_scale [N]``; ``means`` and ``quats`` are the values at ``t = μ_t``.
    """

    name = "spacetime"

    def __init__(self, init: SceneInit, config: SpacetimeConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpacetimeConfig()
        c = self.config
        times = init.times.float()
        if times.numel() == 0:
            raise ValueError("spacetime Gaussians need at least one training time")
        t0, t1 = float(times.min()), float(times.max())
        copies = max(1, c.init_time_copies)
        points, colors = init.points.float(), init.colors.float()
        per_copy = max(1, c.gaussians.max_init_points // copies)
        picks, centers = [], []
        qs = (torch.arange(copies, dtype=torch.float32, device=times.device) + 0.5) / copies
        for center in torch.quantile(times, qs).tolist():
            m = points.shape[0]
            idx = (torch.randperm(m, device=points.device)[:per_copy] if m > per_copy
                   else torch.arange(m, device=points.device))
            picks.append(idx)
            centers.append(points.new_full((len(idx),), center))
        idx = torch.cat(picks)
        # Initial scales from the spacing of the distinct points picked: a point in several copies (every
        # point, when the cloud is smaller than a copy) must not count its own copies as neighbours at
        # distance 0, which would start it sub-pixel and invisible.
        used, where = torch.unique(idx, return_inverse=True)
        spacing = knn_mean_distance(points[used])[where]
        self.splats = init_splats(points[idx], colors[idx], sh_degree=c.gaussians.sh_degree,
                                  init_opacity=c.gaussians.init_opacity, spacing=spacing)
        n = self.splats["means"].shape[0]
        scale = c.init_time_scale if c.init_time_scale is not None else 1.0 / copies
        self.splats["motion"] = nn.Parameter(self.splats["means"].new_zeros(n, 9))
        self.splats["omega"] = nn.Parameter(self.splats["means"].new_zeros(n, 4))
        self.splats["t_center"] = nn.Parameter(torch.cat(centers))
        self.splats["t_scale"] = nn.Parameter(self.splats["means"].new_full((n,), math.log(scale)))
        self.splats.split_hook = partial(_split_children, uniform=c.split_time_uniform, t0=t0, t1=t1)
        self.splats.max_opacity = partial(_max_opacity, t0=t0, t1=t1)
        self.extent = float(init.extent)
        self.max_sh_degree = c.gaussians.sh_degree
        self.sh_degree = 0

    def motion(self, t: float, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
        """Means ``[N, 3]``, rotations ``[N, 4]`` (unnormalised) and opacity logits ``[N]`` at ``t``.

        ``backend``: ``"torch"`` the reference (element-wise ops), ``"cpu"`` the fused native op
        (:mod:`moegs.experts._motion_cpu`), ``"auto"`` the native one where it applies.
        """
        s = self.splats
        if _motion_cpu.use_native(backend, s["means"]):
            return _motion_cpu.spacetime_motion_cpu(s["means"], s["motion"], s["quats"], s["omega"], s["opacities"],
                                                    s["t_center"], s["t_scale"], float(t))
        tau = float(t) - s["t_center"]  # [N]
        tp = tau.detach()[:, None]  # [N, 1]
        m = s["motion"]
        means = s["means"] + m[:, 0:3] * tp + m[:, 3:6] * tp**2 + m[:, 6:9] * tp**3
        quats = s["quats"] + s["omega"] * tp
        return means, quats, temporal_opacity_logits(s["opacities"], tau, s["t_scale"])

    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        means, quats, opacity = self.motion(t)
        return GaussianSet(means, quats, s["scales"], opacity, (s["sh0"], s["shN"]),
                           self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        c = self.config
        groups = splat_param_groups(self.splats, c.gaussians.lr, self.extent)
        lr = c.temporal_lr
        groups["motion"] = ParamGroup([self.splats["motion"]], lr.motion * self.extent)
        groups["omega"] = ParamGroup([self.splats["omega"]], lr.omega)
        groups["t_center"] = ParamGroup([self.splats["t_center"]], lr.t_center)
        groups["t_scale"] = ParamGroup([self.splats["t_scale"]], lr.t_scale)
        return groups

    def regularization(self, step: int) -> dict[str, Tensor]:
        return {}

    def on_step(self, step: int) -> None:
        return None
