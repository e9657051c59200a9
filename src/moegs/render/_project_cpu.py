"""The ``cpu`` backend's fused projection and colour: one compiled C++/OpenMP op with a hand-written backward.

``project_and_color_cpu`` does, in one pass over the Gaussians, what
``projection.project_and_color(backend="torch")`` does in a few hundred small tensor
ops: quaternion and log-scale to 3D covariance, EWA projection (0.3 px blur, Jacobian
clamped to 1.3x the frustum), near/far and degenerate culling, 3-sigma radii, and the
SH colour for the view direction. Its backward recomputes the per-Gaussian
intermediates instead of storing them.

Threads: the op runs OpenMP over Gaussians with ``torch.get_num_threads()`` threads,
as the compositing does, so torch's intra-op pool and the native ops share one thread
budget (set it with ``torch.set_num_threads`` or ``OMP_NUM_THREADS``).
"""

from __future__ import annotations


import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cameras import Camera
from ._cpu import NATIVE, NativeOps
from .projection import Colors

__all__ = ["available", "bin_cpu", "build_error", "project_and_color_cpu"]

_PROJECT = NativeOps(NATIVE, "project", "CPU projection")


available = _PROJECT.available
build_error = _PROJECT.error
usable = _PROJECT.usable
_require = _PROJECT.require


class _ProjectCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, cam_args, sh_degree):
        means2d, conics, depths, radii, rgb = _require().forward(
            means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, *cam_args, sh_degree
        )
        ctx.save_for_backward(means, quats, log_scales, coeffs, coeffs_rest, viewmat, center)
        ctx.cam_args, ctx.sh_degree = cam_args, sh_degree
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, rgb

    @staticmethod
    @once_differentiable
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii, g_rgb):
        means, quats, log_scales, coeffs, coeffs_rest, viewmat, center = ctx.saved_tensors
        dt = means.dtype

        def dense(g: Tensor | None, like: Tensor) -> Tensor:
            return torch.zeros_like(like) if g is None else g.to(dt).contiguous()

        n = means.shape[0]
        g_rgb = dense(g_rgb, means.new_empty(n if ctx.sh_degree >= 0 else 0, 3))
        gm, gq, gs, gc, gr = _require().backward(
            means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, *ctx.cam_args, ctx.sh_degree,
            dense(g_means2d, means.new_empty(n, 2)), dense(g_conics, means.new_empty(n, 3)),
            dense(g_depths, means.new_empty(n)), g_rgb,
        )
        sh = ctx.sh_degree >= 0
        return gm, gq, gs, (gc if sh else None), (gr if sh else None), None, None, None, None


def project_and_color_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    log_scales: Tensor,  # [N, 3]
    colors: Colors,  # [N, 3] RGB, [N, K, 3] SH coefficients or those in two parts
    camera: Camera,
    degree: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused projection and colour (see ``projection.project_and_color`` for the semantics).

    Args:
        means, quats, log_scales: ``[N, 3]``, ``[N, 4]``, ``[N, 3]`` float32 or float64.
        colors: ``[N, 3]`` RGB (returned as is) or SH coefficients, one ``[N, K, 3]`` tensor or two parts
            ``([N, K0, 3], [N, K1, 3])`` read in place (cast to ``means``' dtype).
        camera: the pinhole camera.
        degree: SH degree to evaluate, ``(degree + 1) ** 2 <= K`` (ignored for RGB).

    Returns:
        ``means2d`` ``[N, 2]``, ``conics`` ``[N, 3]``, ``depths`` ``[N]``, ``radii`` ``[N]`` int32 and
        ``rgb`` ``[N, 3]``; all but ``radii`` differentiable w.r.t. ``means``, ``quats``,
        ``log_scales`` and ``colors``.
    """
    dt = means.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"project_and_color_cpu supports float32 and float64, got {dt}")
    sh = isinstance(colors, tuple) or colors.dim() == 3
    if not sh:
        coeffs = coeffs_rest = means.new_empty(0)
    else:
        coeffs, coeffs_rest = colors if isinstance(colors, tuple) else (colors, colors.new_empty(colors.shape[0], 0, 3))
        coeffs, coeffs_rest = coeffs.to(dt).contiguous(), coeffs_rest.to(dt).contiguous()
    cam_args = (float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy), int(camera.width),
                int(camera.height), float(camera.near), float(camera.far))
    means2d, conics, depths, radii, rgb = _ProjectCpu.apply(
        means.contiguous(), quats.to(dt).contiguous(), log_scales.to(dt).contiguous(), coeffs, coeffs_rest,
        camera.world_to_camera.to(dt).contiguous(), camera.center.to(dt).contiguous(), cam_args,
        int(degree) if sh else -1,
    )
    return means2d, conics, depths, radii, (rgb if sh else colors)


def bin_cpu(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
            tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``projection.bin_gaussians``'s lists (visible Gaussians, front to back by ``depths`` ``[N]``, ties in
    index order): ``offsets`` ``[T + 1]``, ``flatten_ids`` ``[M]``, ``tile_ids`` ``[M]`` (int64), equal to the reference."""
    m = means2d.detach().contiguous()
    return _require().bin(m, radii.detach().to(m.dtype).contiguous(), depths.detach().to(m.dtype).contiguous(),
                          int(width), int(height), int(tile_size))
