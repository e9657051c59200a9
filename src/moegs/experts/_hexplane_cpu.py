"""The fused HexPlane sampler: one compiled C++/OpenMP op per level with a hand-written backward.

``sample_planes_cpu`` does what ``hexplane.sample_planes_torch`` does with one ``F.grid_sample``
per plane (bilinear, border padding, ``align_corners=True``) and a product over the planes, in
one pass over the Gaussians; its backward scatters the plane gradients without atomics (each
thread owns a range of channels), so it is deterministic and independent of the thread count.

Threads: ``torch.get_num_threads()``, like the other native ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..render._cpu import NATIVE, NativeOps

__all__ = ["HEXPLANE", "available", "build_error", "sample_planes_cpu"]

HEXPLANE = NativeOps(NATIVE, "hexplane", "CPU HexPlane sampler")


available = HEXPLANE.available
build_error = HEXPLANE.error
_require = HEXPLANE.require


class _HexPlaneCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coords, axes, *planes):
        ctx.save_for_backward(coords, *planes)
        ctx.axes = axes
        return _require().forward(list(planes), coords, axes)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        coords, *planes = ctx.saved_tensors
        grad_planes, grad_coords = _require().backward(planes, coords, ctx.axes, grad_out.to(coords.dtype).contiguous())
        return grad_coords, None, *grad_planes


def sample_planes_cpu(
    coords: Tensor,  # [N, D]
    planes: Sequence[Tensor],  # K x [1, C, H_k, W_k]
    axes: Sequence[tuple[int, int]],  # K x (column along W_k, column along H_k)
) -> Tensor:
    """Product over the planes of their bilinear samples (see ``hexplane.sample_planes_torch``).

    Args:
        coords: ``[N, D]`` float32 or float64 coordinates, ``-1`` and ``1`` the first and last cell
            centres; outside values are clamped to the border (with zero gradient there).
        planes: ``K`` planes ``[1, C, H_k, W_k]`` of ``coords``' dtype.
        axes: for plane ``k``, the columns of ``coords`` read along ``W_k`` and along ``H_k``.

    Returns:
        ``[N, C]``, differentiable w.r.t. ``coords`` and every plane.
    """
    dt = coords.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"sample_planes_cpu supports float32 and float64, got {dt}")
    if len(planes) != len(axes) or any(p.dim() != 4 or p.shape[0] != 1 for p in planes):
        raise ValueError("sample_planes_cpu needs one (column, column) pair per [1, C, H, W] plane")
    flat_axes = [int(a) for pair in axes for a in pair]
    return _HexPlaneCpu.apply(coords.contiguous(), flat_axes, *(p[0].to(dt).contiguous() for p in planes))
