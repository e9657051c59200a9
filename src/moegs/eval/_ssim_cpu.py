"""The fused SSIM (and L1): one compiled C++/OpenMP op with a hand-written backward.

``ssim_l1_cpu`` computes what ``metrics.ssim(backend="torch")`` computes with five depthwise
11x11 convolutions: the windowed moments by a separable filter (a horizontal then a
vertical pass, zero padded like the convolutions), the SSIM map and its mean in one
pass over the image, and the per-pixel derivatives of the map that its backward filters
back onto the image (the Gaussian window is symmetric, so it is its own transpose).
Only ``img`` is differentiable: ``ref`` is the target. The same pass also gives the mean
``|img - ref|``, so the photometric loss L1 + D-SSIM is one op forward and one backward.

Threads: the op runs OpenMP over image rows with ``torch.get_num_threads()`` threads,
as the rasterizer does.
"""

from __future__ import annotations


import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..render._cpu import NATIVE, NativeOps
from .metrics import SSIM_C1, SSIM_C2, gaussian_taps

__all__ = ["available", "build_error", "ssim_l1_cpu"]

_SSIM = NativeOps(NATIVE, "ssim", "CPU SSIM")


available = _SSIM.available
build_error = _SSIM.error
usable = _SSIM.usable
_require = _SSIM.require


class _SsimL1Cpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img, ref, taps):
        ssim, l1, d_mu, d_ex2, d_exy = _require().forward(img, ref, taps, SSIM_C1, SSIM_C2, ctx.needs_input_grad[0])
        ctx.save_for_backward(img, ref, taps, d_mu, d_ex2, d_exy)
        return ssim, l1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ssim, grad_l1):
        img, ref, taps, d_mu, d_ex2, d_exy = ctx.saved_tensors
        n = img.numel()
        scale = 0.0 if grad_ssim is None else float(grad_ssim) / n
        l1_scale = 0.0 if grad_l1 is None else float(grad_l1) / n
        return _require().backward(img, ref, taps, d_mu, d_ex2, d_exy, scale, l1_scale), None, None


def ssim_l1_cpu(
    img: Tensor,  # [H, W, C] or [B, H, W, C]
    ref: Tensor,  # same shape
    window: int = 11,
    sigma: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean ``|img - ref|`` by the fused native op (same semantics as ``metrics.ssim_and_l1``).

    Args:
        img, ref: ``[H, W, C]`` or ``[B, H, W, C]`` float32 or float64 CPU images of one shape and dtype;
            ``ref`` must not require a gradient.
        window: odd side of the Gaussian window.
        sigma: its standard deviation in pixels.

    Returns:
        Two scalar tensors (SSIM, L1), differentiable w.r.t. ``img``; one backward call serves both.
    """
    if img.dtype not in (torch.float32, torch.float64) or ref.dtype != img.dtype:
        raise TypeError(f"ssim_l1_cpu needs float32 or float64 images of one dtype, got {img.dtype} and "
                        f"{ref.dtype}")
    if img.shape != ref.shape or img.dim() not in (3, 4):
        raise ValueError(f"ssim_l1_cpu needs [H, W, C] or [B, H, W, C] images of one shape, got "
                         f"{tuple(img.shape)} and {tuple(ref.shape)}")
    if window % 2 != 1:
        raise ValueError(f"ssim_l1_cpu needs an odd window, got {window}")
    if ref.requires_grad:
        raise ValueError("ssim_l1_cpu differentiates w.r.t. img only; ref must not require a gradient")
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    return _SsimL1Cpu.apply(img.contiguous(), ref.contiguous(), gaussian_taps(window, sigma, img))
