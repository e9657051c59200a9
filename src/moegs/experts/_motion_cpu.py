"""Fused per-Gaussian motion of the keyframe and spacetime experts: one compiled C++/OpenMP pass each way.

Written as torch element-wise ops, a deformation is a few dozen passes over ``[N, 3]``/``[N, 4]``
tensors forward and as many backward, each (above torch's grain size) an OpenMP region whose
threads must be woken when they wait passively; these ops do each direction in one pass. The
references with the same semantics are the experts' own torch code
(:meth:`KeyframeGaussians.motion` / :meth:`SpacetimeGaussians.motion` with ``backend="torch"``).

Threads: ``torch.get_num_threads()``, like the other native ops; every output row is written by one
thread, so results do not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..render._cpu import NATIVE, NativeOps

__all__ = ["use_native", "keyframe_motion_cpu", "spacetime_motion_cpu"]

_MOTION = NativeOps(NATIVE, "motion", "CPU expert motion")
_require = _MOTION.require


def use_native(backend: str, x: Tensor) -> bool:
    """Whether an expert's ``motion(t, backend)`` runs the fused op for parameters like ``x``
    (:meth:`~moegs.render._cpu.NativeOps.chooses`)."""
    return _MOTION.chooses(backend, x, "moving the Gaussians with torch ops")


class _KeyframeMotion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, velocity, quats, kf_means, kf_quats, dynamic, scalars):
        ctx.save_for_backward(means, velocity, quats, kf_means, kf_quats, dynamic)
        ctx.scalars = scalars
        return _require().keyframe_forward(means, velocity, quats, kf_means, kf_quats, dynamic, *scalars)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_means, grad_quats):
        dt = ctx.saved_tensors[0].dtype
        grads = _require().keyframe_backward(*ctx.saved_tensors, *ctx.scalars, grad_means.to(dt).contiguous(),
                                             grad_quats.to(dt).contiguous())
        return (*grads, None, None)


def keyframe_motion_cpu(
    means: Tensor,  # [N, 3]
    velocity: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    kf_means: Tensor,  # [N, K, 3]
    kf_quats: Tensor,  # [N, K, 4]
    dynamic: Tensor,  # [N], > 0.5: dynamic
    t: float,
    pos_cols: Sequence[int],
    pos_coefs: Sequence[float],
    rot_cols: tuple[int, int],
    s: float,
) -> tuple[Tensor, Tensor]:
    """Ex4DGS motion at ``t``: dynamic Gaussians at ``sum_w pos_coefs[w] kf_means[:, pos_cols[w]]`` rotated by
    ``slerp(kf_quats[:, rot_cols[0]], kf_quats[:, rot_cols[1]], s)``; static ones at ``means + velocity t``
    rotated by ``normalize(quats)``.

    Returns:
        ``(means_t [N, 3], quats_t [N, 4])``, differentiable w.r.t. every input but ``dynamic``.
    """
    dt = means.dtype
    ts = [x.to(dt).contiguous() for x in (means, velocity, quats, kf_means, kf_quats, dynamic)]
    scalars = (float(t), [int(c) for c in pos_cols], [float(c) for c in pos_coefs], [int(c) for c in rot_cols],
               float(s))
    return _KeyframeMotion.apply(*ts, scalars)


class _SpacetimeMotion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, motion, quats, omega, opacities, t_center, t_scale, t):
        ctx.save_for_backward(means, motion, quats, omega, opacities, t_center, t_scale)
        ctx.t = t
        return _require().spacetime_forward(means, motion, quats, omega, opacities, t_center, t_scale, t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_means, grad_quats, grad_opacity):
        dt = ctx.saved_tensors[0].dtype
        grads = _require().spacetime_backward(*ctx.saved_tensors, ctx.t, grad_means.to(dt).contiguous(),
                                              grad_quats.to(dt).contiguous(), grad_opacity.to(dt).contiguous())
        return (*grads, None)


def spacetime_motion_cpu(
    means: Tensor,  # [N, 3]
    motion: Tensor,  # [N, 9]
    quats: Tensor,  # [N, 4]
    omega: Tensor,  # [N, 4]
    opacities: Tensor,  # [N] logits
    t_center: Tensor,  # [N]
    t_scale: Tensor,  # [N] log temporal scale
    t: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Spacetime motion at ``t`` (``τ = t - t_center``): polynomial means, linear rotation (``τ`` held constant
    in both) and the temporal opacity's logits.

    Returns:
        ``(means_t [N, 3], quats_t [N, 4], opacity_logits_t [N])``, differentiable w.r.t. every input.
    """
    dt = means.dtype
    ts = [x.to(dt).contiguous() for x in (means, motion, quats, omega, opacities, t_center, t_scale)]
    return _SpacetimeMotion.apply(*ts, float(t))
