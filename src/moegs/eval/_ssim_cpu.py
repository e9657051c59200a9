"""The fused SSIM: one compiled C++/OpenMP op with a hand-written backward.

``ssim_cpu`` computes what ``metrics.ssim(backend="torch")`` computes with five depthwise
11x11 convolutions: the windowed moments by a separable filter (a horizontal then a
vertical pass, zero padded like the convolutions), the SSIM map and its mean in one
pass over the image, and the per-pixel derivatives of the map that its backward filters
back onto the image (the Gaussian window is symmetric, so it is its own transpose).
Only ``img`` is differentiable: ``ref`` is the target.

Threads: the op runs OpenMP over image rows with ``torch.get_num_threads()`` threads,
as the rasterizer does.
"""

from __future__ import annotations


import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..render._cpu import NATIVE, NativeOps
from .metrics import SSIM_C1, SSIM_C2, gaussian_taps

__all__ = ["available", "build_error", "ssim_cpu"]

_SSIM = NativeOps(NATIVE, "ssim", "CPU SSIM")


available = _SSIM.available
build_error = _SSIM.error
usable = _SSIM.usable
_require = _SSIM.require


class _SsimCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img, ref, taps):
        mean, d_mu, d_ex2, d_exy = _require().forward(img, ref, taps, SSIM_C1, SSIM_C2, ctx.needs_input_grad[0])
        ctx.save_for_backward(img, ref, taps, d_mu, d_ex2, d_exy)
        return mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean):
        img, ref, taps, d_mu, d_ex2, d_exy = ctx.saved_tensors
        scale = float(grad_mean) / img.numel()
        return _require().backward(img, ref, taps, d_mu, d_ex2, d_exy, scale), None, None


def ssim_cpu(
    img: Tensor,  # [H, W, C] or [B, H, W, C]
    ref: Tensor,  # same shape
    window: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Mean SSIM by the fused native op (same semantics as ``metrics.ssim``).

    Args:
        img, ref: ``[H, W, C]`` or ``[B, H, W, C]`` float32 or float64 CPU images of one shape and dtype;
            ``ref`` must not require a gradient.
        window: odd side of the Gaussian window.
        sigma: its standard deviation in pixels.

    Returns:
        Scalar tensor, differentiable w.r.t. ``img``.
    """
    if img.dtype not in (torch.float32, torch.float64) or ref.dtype != img.dtype:
        raise TypeError(f"ssim_cpu needs float32 or float64 images of one dtype, got {img.dtype} and {ref.dtype}")
    if img.shape != ref.shape or img.dim() not in (3, 4):
        raise ValueError(f"ssim_cpu needs [H, W, C] or [B, H, W, C] images of one shape, got "
                         f"{tuple(img.shape)} and {tuple(ref.shape)}")
    if window % 2 != 1:
        raise ValueError(f"ssim_cpu needs an odd window, got {window}")
    if ref.requires_grad:
        raise ValueError("ssim_cpu differentiates w.r.t. img only; ref must not require a gradient")
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    return _SsimCpu.apply(img.contiguous(), ref.contiguous(), gaussian_taps(window, sigma, img))
