"""Ex4DGS (Lee et al., NeurIPS 2024, "Fully Explicit Dynamic Gaussian Splatting"): static and keyframed Gaussians.

Every Gaussian is either *static* or *dynamic* (``splats["dynamic"]``, a
non-trainable 0/1 entry, so densification carries it):

- static Gaussians move linearly, ``x(t) = x + v t``, with a fixed rotation;
- dynamic Gaussians hold positions and rotations at ``K`` uniformly spaced
  keyframes ``t_k`` over the time span; positions are interpolated with a cubic
  Hermite spline whose tangents come from the neighbouring keyframes
  (Catmull-Rom, ``m_k = (p_{k+1} - p_{k-1}) / 2``, one-sided at the ends, so no
  tangent is stored), rotations by slerp between neighbouring keyframes.

Static→dynamic conversion (simplified from the paper): every
``convert_every`` steps until ``convert_until``, static Gaussians whose
displacement over the time span ``|v| (t_1 - t_0)`` exceeds
``convert_threshold`` x the scene extent (at most ``convert_max_fraction`` of
the static ones, the fastest first) become dynamic, their keyframes sampled
from their linear motion.

Progressive keyframes: the keyframe tensors are allocated at the finest level
(``K = (initial_keyframes - 1) * 2^keyframe_levels + 1``) and training starts
with only every ``2^keyframe_levels``-th one active; every
``subdivide_every`` steps the interval is halved, the newly activated
keyframes being set from the current spline so the motion is continuous.
Allocating the finest level up front keeps every per-Gaussian tensor's shape
fixed (``[N, K, 3]`` / ``[N, K, 4]``), so the optimiser's moments stay valid
and inactive keyframes, which get zero gradients, stay put.

Not reproduced: the temporal opacity mixture for appearing/disappearing
Gaussians and point backtracking (error-based pruning). The loss is the
photometric one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import GaussianSet, init_splats
from .base import ParamGroup, SceneInit
from .base import CanonicalConfig, splat_param_groups
from . import _motion_cpu

__all__ = ["KeyframeConfig", "KeyframeGaussians", "hermite", "hermite_coefficients", "slerp", "catmull_rom_tangent"]


def catmull_rom_tangent(points: Tensor, k: int) -> Tensor:
    """Tangent at keyframe ``k`` (per keyframe interval) of a uniform Catmull-Rom spline.

    Args:
        points: ``[N, K, D]`` keyframe values, ``K >= 2``.

    Returns:
        ``[N, D]``: ``(p_{k+1} - p_{k-1}) / 2`` inside, one-sided differences at the ends.
    """
    K = points.shape[1]
    if k == 0:
        return points[:, 1] - points[:, 0]
    if k == K - 1:
        return points[:, K - 1] - points[:, K - 2]
    return (points[:, k + 1] - points[:, k - 1]) / 2


def hermite(p0: Tensor, m0: Tensor, p1: Tensor, m1: Tensor, s: float) -> Tensor:
    """Cubic Hermite interpolation at ``s ∈ [0, 1]`` between ``p0`` and ``p1`` (``[..., D]``).

    ``m0``, ``m1`` (``[..., D]``) are the tangents at the two ends, per unit of ``s``.
    """
    s2, s3 = s * s, s * s * s
    return (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1


def hermite_coefficients(window: int, k: int, s: float) -> list[float]:
    """The spline of :meth:`KeyframeGaussians.interpolate` as weights of its keyframes.

    ``hermite(P_k, m_k, P_{k+1}, m_{k+1}, s)`` with Catmull-Rom tangents ``m`` (``catmull_rom_tangent``) is
    linear in the ``window`` keyframes ``P_0 .. P_{window-1}``: this returns the ``window`` weights ``c`` with
    ``hermite(...) = sum_w c[w] P_w``.
    """
    def tangent(j: int) -> list[float]:  # catmull_rom_tangent's weights
        lo, hi = max(j - 1, 0), min(j + 1, window - 1)
        c = [0.0] * window
        c[hi] += 1.0 / (hi - lo)
        c[lo] -= 1.0 / (hi - lo)
        return c

    s2, s3 = s * s, s * s * s
    h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
    m0, m1 = tangent(k), tangent(k + 1)
    c = [h10 * a + h11 * b for a, b in zip(m0, m1)]
    c[k] += h00
    c[k + 1] += h01
    return c


def slerp(q0: Tensor, q1: Tensor, s: float, eps: float = 1e-4) -> Tensor:
    """Spherical linear interpolation of unit quaternions ``[N, 4]`` at ``s ∈ [0, 1]`` along the shorter arc.

    Falls back to normalised linear interpolation where the two are (nearly) equal.
    """
    q0, q1 = F.normalize(q0, dim=-1), F.normalize(q1, dim=-1)
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0 - 1e-7)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    small = sin < eps
    safe_sin = torch.where(small, torch.ones_like(sin), sin)
    w0 = torch.where(small, torch.full_like(sin, 1.0 - s), torch.sin((1 - s) * theta) / safe_sin)
    w1 = torch.where(small, torch.full_like(sin, s), torch.sin(s * theta) / safe_sin)
    return F.normalize(w0 * q0 + w1 * q1, dim=-1)


def _split_children(parents: dict[str, Tensor], children: dict[str, Tensor]) -> dict[str, Tensor]:
    """``split_hook``: move a split dynamic Gaussian's keyframes with its sampled offset."""
    offset = (children["means"] - parents["means"].repeat(2, 1)) * children["dynamic"][:, None]  # [2S, 3]
    return {"kf_means": children["kf_means"] + offset[:, None, :]}


@dataclass
class KeyframeConfig:
    """Ex4DGS. Defaults sized for a CPU."""

    name: ClassVar[str] = "keyframe"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates.
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=10_000))
    # Keyframes at the start (over the whole time span, ends included).
    initial_keyframes: int = 3
    # Times the keyframe interval is halved during training (finest: (initial - 1) * 2^levels + 1 keyframes).
    keyframe_levels: int = 3
    # Halve the interval every this many steps.
    subdivide_every: int = 500
    # Look for static Gaussians to convert every this many steps (0 disables conversion).
    convert_every: int = 100
    # Steps before the first conversion (lets the linear motion settle first).
    convert_start: int = 200
    # No conversion from this step on.
    convert_until: int = 3000
    # Convert when the displacement over the time span exceeds this fraction of the scene extent.
    convert_threshold: float = 0.002
    # Convert at most this fraction of the static Gaussians at once (the fastest first).
    convert_max_fraction: float = 0.2
    # Learning rate of the static velocities (times the scene extent).
    velocity_lr: float = 1.6e-4
    # Learning rates of the keyframe positions (times the scene extent; decays like means) and rotations.
    kf_means_lr: float = 1.6e-4
    kf_means_lr_final: float = 1.6e-6
    kf_quats_lr: float = 1e-3


class KeyframeGaussians(nn.Module):
    """Static Gaussians with linear motion plus dynamic Gaussians interpolated between keyframes.

    ``splats`` adds to the 3DGS entries ``velocity [N, 3]``, ``kf_means [N, K, 3]``,
    ``kf_quats [N, K, 4]`` and ``dynamic [N]`` (0/1, not trained, so it has no optimiser group).
    """

    name = "keyframe"

    def __init__(self, init: SceneInit, config: KeyframeConfig | None = None) -> None:
        super().__init__()
        self.config = config or KeyframeConfig()
        c = self.config
        if c.initial_keyframes < 2:
            raise ValueError(f"initial_keyframes must be >= 2, got {c.initial_keyframes}")
        times = init.times.float()
        self.t0 = float(times.min()) if times.numel() else 0.0
        self.t1 = float(times.max()) if times.numel() else 1.0
        if self.t1 <= self.t0:
            self.t1 = self.t0 + 1.0
        self.num_keyframes = (c.initial_keyframes - 1) * 2**c.keyframe_levels + 1
        self.splats = init_splats(init.points, init.colors, sh_degree=c.gaussians.sh_degree, init_opacity=c.gaussians.init_opacity,
                                  max_points=c.gaussians.max_init_points)
        n, K = self.splats["means"].shape[0], self.num_keyframes
        self.splats["velocity"] = nn.Parameter(self.splats["means"].new_zeros(n, 3))
        self.splats["kf_means"] = nn.Parameter(self.splats["means"].detach()[:, None].repeat(1, K, 1))
        self.splats["kf_quats"] = nn.Parameter(self.splats["quats"].detach()[:, None].repeat(1, K, 1))
        self.splats["dynamic"] = nn.Parameter(self.splats["means"].new_zeros(n), requires_grad=False)
        self.splats.split_hook = _split_children
        self.extent = float(init.extent)
        self.max_sh_degree = c.gaussians.sh_degree
        self.sh_degree = 0
        # Subdivisions done so far (a buffer: a loaded checkpoint interpolates at its level).
        self.register_buffer("level", torch.zeros((), dtype=torch.long, device=self.splats["means"].device))

    # ------------------------------------------------------------ keyframes
    def stride(self, level: int | None = None) -> int:
        """Spacing of the active keyframes of ``level`` (default: the current one) in the finest grid."""
        return 2 ** (self.config.keyframe_levels - (int(self.level) if level is None else level))

    def active_indices(self, level: int | None = None) -> Tensor:
        """``[Ka]`` indices of the keyframes active at ``level`` (default: the current one)."""
        return torch.arange(0, self.num_keyframes, self.stride(level), device=self.level.device)

    def keyframe_times(self) -> Tensor:
        """``[K]`` times of all (finest-level) keyframes."""
        return torch.linspace(self.t0, self.t1, self.num_keyframes, device=self.level.device)

    def segment(self, t: float, level: int | None = None) -> tuple[list[int], int, float]:
        """Where ``t`` falls among the keyframes active at ``level`` (default: the current one).

        Returns ``(window, k, s)``: the keyframe columns the spline reads (``i - 1 .. i + 2`` of the active
        ones around the segment ``i`` holding ``t``, cut at the ends, where the spline's tangents are
        one-sided), the segment's start within the window and ``s ∈ [0, 1]`` along it.
        """
        stride = self.stride(level)
        ka = len(range(0, self.num_keyframes, stride))  # the active keyframes are every stride-th one
        u = (min(max(float(t), self.t0), self.t1) - self.t0) / (self.t1 - self.t0) * (ka - 1)
        i = min(int(math.floor(u)), ka - 2)
        j0, j1 = max(i - 1, 0), min(i + 2, ka - 1)
        return [j * stride for j in range(j0, j1 + 1)], i - j0, u - i

    def interpolate(self, t: float, kf_means: Tensor, kf_quats: Tensor, level: int | None = None,
                    ) -> tuple[Tensor, Tensor]:
        """Position ``[N, 3]`` and rotation ``[N, 4]`` at ``t`` from the keyframes ``kf_*`` (``[N, K, 3/4]``)
        active at ``level`` (default: the current one): Hermite spline and slerp (torch ops)."""
        cols, k, s = self.segment(t, level)
        # Only the keyframes the segment reads, as strided views (no gather of every keyframe, and a
        # backward that fills [N, 4, D] rather than [N, K, D] per read).
        step = cols[1] - cols[0]
        P = kf_means[:, cols[0]: cols[-1] + 1: step]  # [N, <= 4, 3]
        Q = kf_quats[:, cols[k]: cols[k + 1] + 1: step]  # [N, 2, 4]
        pos = hermite(P[:, k], catmull_rom_tangent(P, k), P[:, k + 1], catmull_rom_tangent(P, k + 1), s)
        rot = slerp(Q[:, 0], Q[:, 1], s)
        return pos, rot

    def motion(self, t: float, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """Positions ``[N, 3]`` and rotations ``[N, 4]`` of every Gaussian at ``t``.

        ``backend``: ``"torch"`` the reference (``interpolate`` and element-wise ops), ``"cpu"`` the fused
        native op (:mod:`moegs.experts._motion_cpu`), ``"auto"`` the native one where it applies.
        """
        s = self.splats
        if _motion_cpu.use_native(backend, s["means"]):
            cols, k, u = self.segment(t)
            return _motion_cpu.keyframe_motion_cpu(s["means"], s["velocity"], s["quats"], s["kf_means"],
                                                   s["kf_quats"], s["dynamic"], float(t), cols,
                                                   hermite_coefficients(len(cols), k, u), (cols[k], cols[k + 1]), u)
        dyn = (s["dynamic"] > 0.5)[:, None]  # [N, 1]
        static_pos = s["means"] + s["velocity"] * float(t)
        pos, rot = self.interpolate(t, s["kf_means"], s["kf_quats"])
        return torch.where(dyn, pos, static_pos), torch.where(dyn, rot, F.normalize(s["quats"], dim=-1))

    @torch.no_grad()
    def subdivide(self) -> None:
        """Halve the keyframe interval; new keyframes take the current spline's values (motion unchanged there)."""
        level = int(self.level)
        if level >= self.config.keyframe_levels:
            return
        old_idx, new_idx = self.active_indices(level), self.active_indices(level + 1)
        times = self.keyframe_times()
        s = self.splats
        for k in new_idx[~torch.isin(new_idx, old_idx)].tolist():
            pos, rot = self.interpolate(float(times[k]), s["kf_means"], s["kf_quats"], level)
            s["kf_means"].data[:, k] = pos
            s["kf_quats"].data[:, k] = rot
        self.level.fill_(level + 1)

    @torch.no_grad()
    def convert_static(self) -> int:
        """Turn the fastest-moving static Gaussians dynamic; returns how many were converted."""
        c, s = self.config, self.splats
        static = s["dynamic"] < 0.5
        motion = s["velocity"].norm(dim=-1) * (self.t1 - self.t0)  # [N]
        cand = static & (motion > c.convert_threshold * self.extent)
        cap = int(c.convert_max_fraction * int(static.sum()))
        if int(cand.sum()) > cap:
            score = torch.where(cand, motion, torch.full_like(motion, -1.0))
            top = score.topk(cap).indices
            cand = torch.zeros_like(cand)
            cand[top] = True
        idx = torch.nonzero(cand).squeeze(1)
        if len(idx) == 0:
            return 0
        times = self.keyframe_times().to(s["means"])  # [K]
        s["kf_means"].data[idx] = s["means"][idx, None] + s["velocity"][idx, None] * times[None, :, None]
        s["kf_quats"].data[idx] = F.normalize(s["quats"][idx], dim=-1)[:, None]
        s["dynamic"].data[idx] = 1.0
        return len(idx)

    # ------------------------------------------------------------- protocol
    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        means, quats = self.motion(t)
        return GaussianSet(means, quats, s["scales"], s["opacities"], (s["sh0"], s["shN"]),
                           self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        c = self.config
        groups = splat_param_groups(self.splats, c.gaussians.lr, self.extent)
        groups["velocity"] = ParamGroup([self.splats["velocity"]], c.velocity_lr * self.extent)
        groups["kf_means"] = ParamGroup([self.splats["kf_means"]], c.kf_means_lr * self.extent,
                                        c.kf_means_lr_final * self.extent)
        groups["kf_quats"] = ParamGroup([self.splats["kf_quats"]], c.kf_quats_lr)
        return groups

    def regularization(self, step: int) -> dict[str, Tensor]:
        return {}

    def on_step(self, step: int) -> None:
        c = self.config
        if c.subdivide_every > 0:
            target = min(c.keyframe_levels, step // c.subdivide_every)
            while int(self.level) < target:
                self.subdivide()
        if (c.convert_every > 0 and c.convert_start <= step < c.convert_until
                and (step - c.convert_start) % c.convert_every == 0):
            self.convert_static()
