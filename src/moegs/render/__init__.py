"""Differentiable Gaussian rasterization: one function, three backends.

``rasterize`` projects Gaussians into a camera (EWA splatting), evaluates
their colour (SH or given), bins them into 16x16 tiles and alpha-composites
colour, depth and any number of extra per-Gaussian channels with the same
weights. Backends:

- ``"cpu"``: compiled C++/OpenMP ops with hand-written backwards (built on first
  use, cached): one fused projection + colour op, then tile compositing;
- ``"torch"``: the pure-PyTorch reference, autograd backward (the tests' oracle);
- ``"cuda"``: gsplat's CUDA kernels, for tensors on a GPU (``pip install moegs[cuda]``).

``"auto"`` picks ``cuda`` for GPU tensors and ``cpu`` otherwise.

``rasterize_experts`` (:mod:`moegs.render.multi`) renders the Gaussians of several experts in one
pass - one projection, one depth sort, one transmittance per expert and pixel - into one image per
expert, equal to separate ``rasterize`` calls.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..cameras import Camera
from ._torch_impl import composite_torch
from .projection import (TILE_SIZE, Colors, bin_gaussians, eval_colors, join_colors, project_and_color,
                         project_gaussians, quat_to_rotmat)
from .sh import eval_sh, num_sh_bases, rgb_to_sh0

__all__ = [
    "Backend",
    "BACKENDS",
    "RenderOutput",
    "rasterize",
    "resolve_backend",
    "project_gaussians",
    "project_and_color",
    "bin_gaussians",
    "quat_to_rotmat",
    "eval_sh",
    "num_sh_bases",
    "rgb_to_sh0",
    "TILE_SIZE",
    "eval_colors",
    "Colors",
    "join_colors",
    "blend_background",
    "background_or_none",
    "expected_depth",
    "ExpertsRenderOutput",
    "PreparedExperts",
    "prepare_experts",
    "composite_experts",
    "rasterize_experts",
    "SplatWeights",
    "splat_weights",
]

Backend = Literal["auto", "cpu", "torch", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "cpu", "torch", "cuda")


@dataclass
class RenderOutput:
    """What ``rasterize`` returns.

    Attributes:
        color: ``[H, W, 3]`` colour over the background.
        alpha: ``[H, W]`` accumulated opacity.
        depth_acc: ``[H, W]`` alpha-weighted camera z (composited like a colour channel); :attr:`depth`
            is the expected depth made from it when asked for.
        extras: ``[H, W, C]`` extra channels composited with the colour's weights (no background).
        meta: intermediates for strategies and losses: ``means2d`` ``[N, 2]`` (``[1, N, 2]`` with the
            cuda backend; its ``.grad`` after backward is the screen-space gradient used by densification), ``radii`` ``[N]``,
            ``depths`` ``[N]``, ``width``, ``height``, ``backend``.
    """

    color: Tensor
    alpha: Tensor
    depth_acc: Tensor
    extras: Tensor
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> Tensor:
        """``[H, W]`` expected depth (``depth_acc`` divided by alpha; 0 where empty)."""
        return expected_depth(self.depth_acc, self.alpha)


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """The concrete backend ``"auto"`` stands for on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        if backend == "cuda" and device.type != "cuda":
            raise ValueError("the cuda backend needs tensors on a CUDA device")
        if backend in ("cpu", "torch") and device.type != "cpu":
            raise ValueError(f"the {backend} backend needs tensors on the CPU")
        return backend
    if device.type == "cuda":
        return "cuda"
    from . import _cpu

    if _cpu.available():
        return "cpu"
    warnings.warn(f"moegs: the compiled CPU rasterizer is unavailable ({_cpu.build_error()}); using the slower torch backend")
    return "torch"


def blend_background(color: Tensor, alpha: Tensor, background: Tensor | None) -> Tensor:
    """Composited colour ``[..., H, W, 3]`` over ``background`` ``[3]`` given the accumulated opacity
    ``alpha`` ``[..., H, W]``; ``None`` is black and adds nothing."""
    return color if background is None else color + (1.0 - alpha)[..., None] * background


def expected_depth(depth_acc: Tensor, alpha: Tensor) -> Tensor:
    """Expected depth ``[..., H, W]`` from alpha-weighted depth ``depth_acc`` and alpha (0 where empty)."""
    return torch.where(alpha > 1e-6, depth_acc / alpha.clamp_min(1e-6), torch.zeros_like(depth_acc))


def background_or_none(background: Tensor | None, like: Tensor) -> Tensor | None:
    """``background`` as ``like``'s dtype and device, or ``None`` where it is black on the CPU (blending it
    changes no value and no gradient; on a GPU the check would cost a synchronisation, so it is blended)."""
    if background is None:
        return None
    bg = background.to(like)
    return None if bg.device.type == "cpu" and not bool(bg.any()) else bg


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    log_scales: Tensor,  # [N, 3]
    opacity_logits: Tensor,  # [N]
    colors: Colors,  # [N, 3], [N, K, 3] SH coefficients, or those in two parts
    camera: Camera,
    *,
    sh_degree: int | None = None,
    extras: Tensor | None = None,  # [N, C]
    background: Tensor | None = None,  # [3]
    backend: Backend = "auto",
) -> RenderOutput:
    """Render Gaussians into ``camera``.

    Args:
        means: ``[N, 3]`` centres (world).
        quats: ``[N, 4]`` rotations as (w, x, y, z) quaternions (normalised internally).
        log_scales: ``[N, 3]`` log standard deviations.
        opacity_logits: ``[N]`` opacities before the sigmoid.
        colors: ``[N, 3]`` RGB, or ``[N, K, 3]`` SH coefficients (3DGS basis, colour = SH + 0.5, clamped at 0),
            also as two parts along the bands (:data:`~moegs.render.projection.Colors`, read in place).
        camera: pinhole camera (OpenCV convention).
        sh_degree: SH degree to evaluate (default: the highest ``K`` holds).
        extras: ``[N, C]`` extra per-Gaussian channels, composited like colour.
        background: ``[3]`` colour behind the Gaussians (default black).
        backend: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"cuda"``.

    Returns:
        :class:`RenderOutput`; every output is differentiable w.r.t. every input tensor.
    """
    N = means.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or log_scales.shape != (N, 3) or opacity_logits.shape != (N,):
        raise ValueError(
            f"shape mismatch: means {tuple(means.shape)}, quats {tuple(quats.shape)}, "
            f"log_scales {tuple(log_scales.shape)}, opacity_logits {tuple(opacity_logits.shape)} (want N x 3/4/3, N)"
        )
    parts = colors if isinstance(colors, tuple) else (colors,)
    dims = (3,) if isinstance(colors, tuple) else (2, 3)
    if len(parts) > 2 or any(c.shape[0] != N or c.shape[-1] != 3 or c.dim() not in dims for c in parts):
        raise ValueError(f"colors must be [N, 3], [N, K, 3] or two [N, K_i, 3] parts, got "
                         f"{[tuple(c.shape) for c in parts]}")
    if extras is None:
        extras = means.new_zeros(N, 0)
    if extras.dim() != 2 or extras.shape[0] != N:
        raise ValueError(f"extras must be [N, C], got {tuple(extras.shape)}")
    name = resolve_backend(backend, means.device)

    opac = torch.sigmoid(opacity_logits)
    bg = background_or_none(background, means)

    if name == "cuda":
        from ._cuda import rasterize_cuda

        rgb = eval_colors(means, colors, camera, sh_degree)
        feats, alpha, depth_acc, means2d, radii, depths = rasterize_cuda(means, quats, log_scales, opac, rgb, extras, camera)
        color_acc, extras_img = feats[..., :3], feats[..., 3:]
    else:
        proj, rgb = project_and_color(means, quats, log_scales, colors, camera, sh_degree=sh_degree, backend=name)
        means2d, radii, depths = proj.means2d, proj.radii, proj.depths
        bins = bin_gaussians(means2d, radii, depths, camera.width, camera.height, backend=name)
        features = torch.cat((rgb, depths[:, None], extras), dim=-1)
        if name == "torch":
            out, alpha = composite_torch(means2d, proj.conics, opac, features, bins, camera.width, camera.height)
        else:
            from ._cpu import composite_cpu

            out, alpha = composite_cpu(means2d, proj.conics, opac, features, bins, camera.width, camera.height)
        color_acc, depth_acc, extras_img = out[..., :3], out[..., 3], out[..., 4:]
    if means2d.requires_grad:
        means2d.retain_grad()
    meta = {"means2d": means2d, "radii": radii, "depths": depths, "width": camera.width, "height": camera.height,
            "backend": name}
    return RenderOutput(color=blend_background(color_acc, alpha, bg), alpha=alpha, depth_acc=depth_acc,
                        extras=extras_img, meta=meta)


from .multi import (  # noqa: E402
    ExpertsRenderOutput, PreparedExperts, SplatWeights, composite_experts, prepare_experts, rasterize_experts,
    splat_weights,
)
