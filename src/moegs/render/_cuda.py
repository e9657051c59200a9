"""The ``cuda`` backend: gsplat's fused CUDA projection and tile rasterization.

Installed with ``pip install moegs[cuda]`` on machines with a GPU; imported
only when tensors live on a CUDA device. Colour (already evaluated from SH),
accumulated depth and the extra channels go through gsplat as one feature
vector, so the outputs mean exactly what the cpu and torch backends return.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Camera

__all__ = ["rasterize_cuda"]


def _gsplat():
    try:
        import gsplat
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise RuntimeError("the cuda backend needs gsplat: pip install 'moegs[cuda]'") from e
    return gsplat


def rasterize_cuda(means: Tensor, quats: Tensor, log_scales: Tensor, opacities: Tensor, rgb: Tensor,
                   extras: Tensor, camera: Camera):
    """Composite with gsplat.

    Returns ``(features [H, W, 3 + C], alpha [H, W], depth_acc [H, W], means2d [1, N, 2], radii [N], depths [N])``
    where ``depth_acc`` is the alpha-weighted sum of camera depths (not yet divided by alpha) and
    ``means2d`` is gsplat's own tensor (batched over one camera), the one whose gradient densification reads.
    """
    gsplat = _gsplat()
    colors = torch.cat((rgb, extras), dim=-1)
    renders, alphas, meta = gsplat.rasterization(
        means, quats, torch.exp(log_scales), opacities, colors,
        viewmats=camera.world_to_camera.to(means)[None], Ks=camera.K.to(means)[None],
        width=camera.width, height=camera.height, near_plane=camera.near, far_plane=camera.far,
        eps2d=0.3, packed=False, render_mode="RGB+D", tile_size=16,
    )
    out = renders[0]
    radii = meta["radii"][0]
    if radii.dim() == 2:  # newer gsplat: per-axis radii
        radii = radii.max(dim=-1).values
    return out[..., :-1], alphas[0, ..., 0], out[..., -1], meta["means2d"], radii.int(), meta["depths"][0]
