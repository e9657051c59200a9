"""Projection of 3D Gaussians to screen space (EWA splatting), their colour, and tile binning.

``project_and_color`` is what every expert's Gaussians go through before compositing:
the pure-PyTorch code here is the reference (backend ``"torch"``, autograd backward);
backend ``"cpu"`` runs the same computation as one fused C++/OpenMP op with a
hand-written backward (``_project_cpu.py``). Binning is shared by both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Camera
from .sh import eval_sh

__all__ = [
    "Colors", "Projected", "quat_to_rotmat", "project_gaussians", "eval_colors", "join_colors", "project_and_color",
    "TileBins", "bin_gaussians", "TILE_SIZE",
]

Colors = Union[Tensor, tuple[Tensor, Tensor]]
"""Per-Gaussian colour: ``[N, 3]`` RGB, ``[N, K, 3]`` SH coefficients (3DGS basis), or the coefficients in two
parts along the band axis, ``([N, K0, 3], [N, K1, 3])`` with ``K = K0 + K1``, as experts store them (3DGS's
``sh0`` and ``shN``): the fused CPU projection reads and differentiates the parts in place, with no
``[N, K, 3]`` concatenation forward nor split of its gradient backward."""


def join_colors(colors: Colors) -> Tensor:
    """``colors`` as one tensor: RGB ``[N, 3]`` as is, SH coefficients ``[N, K, 3]`` (parts concatenated)."""
    return torch.cat(colors, dim=1) if isinstance(colors, tuple) else colors


def _num_bands(colors: Colors) -> int | None:
    """SH coefficients held (``K``), or ``None`` for RGB."""
    if isinstance(colors, tuple):
        return sum(c.shape[1] for c in colors)
    return colors.shape[1] if colors.dim() == 3 else None

TILE_SIZE = 16
BLUR = 0.3  # low-pass filter added to the 2D covariance (3DGS)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """``[N, 4]`` quaternions (w, x, y, z; normalised here) -> ``[N, 3, 3]`` rotations."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


@dataclass
class Projected:
    """Screen-space Gaussians.

    Attributes:
        means2d: ``[N, 2]`` pixel coordinates of the centres.
        conics: ``[N, 3]`` upper triangle (a, b, c) of the inverse 2D covariance.
        depths: ``[N]`` camera-space z.
        radii: ``[N]`` int32 pixel radius (3 sigma); 0 for culled Gaussians.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor


def project_gaussians(means: Tensor, quats: Tensor, log_scales: Tensor, camera: Camera) -> Projected:
    """Project Gaussians into ``camera`` (3DGS's EWA approximation, +0.3 px blur).

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations (w, x, y, z), any norm.
        log_scales: ``[N, 3]`` log standard deviations along the local axes.
        camera: the pinhole camera.

    Gaussians with depth outside ``[near, far]``, degenerate 2D covariance or a
    footprint entirely off-screen get radius 0 and are ignored by compositing.
    """
    w2c = camera.world_to_camera.to(means)
    R, t = w2c[:3, :3], w2c[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    valid = (z > camera.near) & (z < camera.far)
    zs = torch.where(valid, z, torch.ones_like(z))  # safe denominators for culled ones

    # Jacobian of the perspective map, evaluated at the centre clamped to 1.3x the
    # view frustum (as 3DGS/gsplat do) so that far off-screen Gaussians stay stable.
    mx = 0.15 * camera.width / camera.fx
    my = 0.15 * camera.height / camera.fy
    tx = (x / zs).clamp(-camera.cx / camera.fx - mx, (camera.width - camera.cx) / camera.fx + mx) * zs
    ty = (y / zs).clamp(-camera.cy / camera.fy - my, (camera.height - camera.cy) / camera.fy + my) * zs
    zero = torch.zeros_like(zs)
    J = torch.stack(
        (camera.fx / zs, zero, -camera.fx * tx / (zs * zs), zero, camera.fy / zs, -camera.fy * ty / (zs * zs)), dim=-1
    ).reshape(-1, 2, 3)

    rot = quat_to_rotmat(quats)
    M = rot * torch.exp(log_scales)[:, None, :]  # R S
    cov3d = M @ M.transpose(1, 2)
    T = J @ R[None]  # [N, 2, 3]
    cov2d = T @ cov3d @ T.transpose(1, 2)
    a = cov2d[:, 0, 0] + BLUR
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + BLUR
    det = a * c - b * b
    valid = valid & (det > 1e-12)
    det_s = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack((c / det_s, -b / det_s, a / det_s), dim=-1)

    means2d = torch.stack((camera.fx * x / zs + camera.cx, camera.fy * y / zs + camera.cy), dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det_s).clamp_min(0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam))
        on_screen = (
            (means2d[:, 0] + radii > 0)
            & (means2d[:, 0] - radii < camera.width)
            & (means2d[:, 1] + radii > 0)
            & (means2d[:, 1] - radii < camera.height)
        )
        valid = valid & on_screen & torch.isfinite(radii) & torch.isfinite(means2d).all(-1)
        radii = torch.where(valid, radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def sh_degree_of(colors: Colors, sh_degree: int | None) -> int:
    """The SH degree to evaluate for SH ``colors`` (``B`` coefficients): ``sh_degree``, or the highest ``B`` holds."""
    return sh_degree if sh_degree is not None else int(round(_num_bands(colors) ** 0.5)) - 1


def eval_colors(means: Tensor, colors: Colors, camera: Camera, sh_degree: int | None = None) -> Tensor:
    """``[N, 3]`` colour of Gaussians at ``means`` ``[N, 3]`` seen from ``camera``: ``colors`` ``[N, 3]`` RGB
    as is, or SH coefficients (:data:`Colors`, ``B`` in all) evaluated up to ``sh_degree`` (default: what ``B``
    holds) for the direction camera centre -> mean, + 0.5, clamped at 0."""
    colors = join_colors(colors)
    if colors.dim() != 3:
        return colors
    dirs = F.normalize(means - camera.center.to(means), dim=-1)
    return (eval_sh(sh_degree_of(colors, sh_degree), colors, dirs) + 0.5).clamp_min(0.0)


def project_and_color(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    log_scales: Tensor,  # [N, 3]
    colors: Colors,  # [N, 3] RGB, [N, B, 3] SH coefficients, or those in two parts
    camera: Camera,
    *,
    sh_degree: int | None = None,
    backend: str = "torch",
) -> tuple[Projected, Tensor]:
    """Project Gaussians into ``camera`` and evaluate their colour there.

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations (w, x, y, z), any norm.
        log_scales: ``[N, 3]`` log standard deviations.
        colors: ``[N, 3]`` RGB (returned as is) or ``B`` SH coefficients (3DGS basis), as one ``[N, B, 3]``
            tensor or in two parts (:data:`Colors`).
        camera: the pinhole camera.
        sh_degree: SH degree to evaluate, ``(sh_degree + 1) ** 2 <= B`` (default: the highest ``B`` holds).
        backend: ``"torch"`` (this module's reference: :func:`project_gaussians` + :func:`eval_colors`)
            or ``"cpu"`` (the fused native op, same results to float rounding).

    Returns:
        :class:`Projected` (``means2d`` ``[N, 2]``, ``conics`` ``[N, 3]``, ``depths`` ``[N]``, ``radii``
        ``[N]`` int32) and ``rgb`` ``[N, 3]``; differentiable w.r.t. every input tensor, the view-direction
        dependence of the colour on ``means`` included.
    """
    bands = _num_bands(colors)
    if bands is not None:
        degree = sh_degree_of(colors, sh_degree)
        if not 0 <= degree <= 3 or bands < (degree + 1) ** 2:
            raise ValueError(f"SH degree {degree} needs {(degree + 1) ** 2} of the {bands} coefficients held")
    if backend not in ("torch", "cpu"):
        raise ValueError(f"project_and_color runs on the torch or cpu backend, not {backend!r}")
    if backend == "cpu":
        from . import _project_cpu

        if not _project_cpu.usable("projecting with the torch reference"):
            backend = "torch"
    if backend == "torch":
        return project_gaussians(means, quats, log_scales, camera), eval_colors(means, colors, camera, sh_degree)
    from ._project_cpu import project_and_color_cpu

    means2d, conics, depths, radii, rgb = project_and_color_cpu(
        means, quats, log_scales, colors, camera, sh_degree_of(colors, sh_degree) if bands is not None else -1
    )
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii), rgb


@dataclass
class TileBins:
    """Gaussian lists per 16x16 tile, each front to back.

    Attributes:
        tiles_x, tiles_y: grid size.
        offsets: ``[tiles_y * tiles_x + 1]`` int64; tile ``k`` owns ``flatten_ids[offsets[k]:offsets[k+1]]``.
        flatten_ids: ``[M]`` int64 Gaussian indices, grouped by tile, sorted by depth within a tile.
        tile_ids: ``[M]`` int64 tile of each entry of ``flatten_ids``.
    """

    tiles_x: int
    tiles_y: int
    offsets: Tensor
    flatten_ids: Tensor
    tile_ids: Tensor


@torch.no_grad()
def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                  tile_size: int = TILE_SIZE, *, backend: str = "auto") -> TileBins:
    """Assign each visible Gaussian to the tiles its 3-sigma square overlaps.

    Args:
        means2d: ``[N, 2]``; radii: ``[N]`` (0 = culled); depths: ``[N]``.
        backend: ``"auto"`` (the compiled binning for CPU tensors when it is available, else the
            PyTorch code), ``"cpu"`` or ``"torch"`` (the reference); both give the same lists.
    """
    dev = means2d.device
    tx, ty = (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size
    if backend == "cpu" or (backend == "auto" and dev.type == "cpu" and means2d.dtype in (torch.float32, torch.float64)):
        from . import _project_cpu

        if backend == "cpu" or _project_cpu.available():
            offsets, ids, tile = _project_cpu.bin_cpu(means2d, radii, depths, width, height, tile_size)
            return TileBins(tiles_x=tx, tiles_y=ty, offsets=offsets, flatten_ids=ids, tile_ids=tile)
    vis = torch.nonzero(radii > 0).squeeze(1)
    vis = vis[torch.argsort(depths[vis], stable=True)]  # front to back
    m, r = means2d[vis].detach(), radii[vis].to(means2d.dtype)
    x0 = ((m[:, 0] - r) / tile_size).floor().clamp(0, tx).long()
    x1 = ((m[:, 0] + r) / tile_size).ceil().clamp(0, tx).long()
    y0 = ((m[:, 1] - r) / tile_size).floor().clamp(0, ty).long()
    y1 = ((m[:, 1] + r) / tile_size).ceil().clamp(0, ty).long()
    nx, ny = x1 - x0, y1 - y0
    counts = nx * ny
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(len(vis), device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=dev) - start[owner]
    nx_o = nx[owner].clamp_min(1)
    tile = (y0[owner] + local // nx_o) * tx + (x0[owner] + local % nx_o)
    order = torch.argsort(tile, stable=True)  # stable: keeps front-to-back within a tile
    tile = tile[order]
    ids = vis[owner[order]]
    offsets = torch.zeros(tx * ty + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=tx * ty), 0)
    return TileBins(tiles_x=tx, tiles_y=ty, offsets=offsets, flatten_ids=ids, tile_ids=tile)
