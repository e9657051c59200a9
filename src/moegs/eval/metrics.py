"""Image metrics: PSNR and SSIM (and the SSIM used by the D-SSIM training loss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SSIM_BACKENDS", "SSIM_C1", "SSIM_C2", "gaussian_taps", "psnr", "ssim", "ssim_and_l1"]


def psnr(img: Tensor, ref: Tensor) -> float:
    """PSNR in dB of ``img`` against ``ref`` (``[..., H, W, 3]``, values in ``[0, 1]``)."""
    mse = F.mse_loss(img.detach().clamp(0, 1), ref.detach()).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # SSIM's stabilising constants for images in [0, 1]
SSIM_BACKENDS: tuple[str, ...] = ("auto", "cpu", "torch")


def gaussian_taps(size: int, sigma: float, like: Tensor) -> Tensor:
    """``[size]`` normalised 1D Gaussian window (``like``'s dtype and device); the 2D window is its outer product."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _ssim_torch(img: Tensor, ref: Tensor, window: int, sigma: float) -> Tensor:
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    x, y = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    c = x.shape[1]
    g = gaussian_taps(window, sigma, x)
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x * mu_x
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y * mu_y
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = SSIM_C1, SSIM_C2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return s.mean()


def _native_applies(img: Tensor, ref: Tensor, window: int) -> bool:
    """Whether the fused op computes this SSIM (it differentiates w.r.t. ``img`` only)."""
    return (img.device.type == "cpu" and ref.device.type == "cpu" and img.dtype in (torch.float32, torch.float64)
            and ref.dtype == img.dtype and img.shape == ref.shape and img.dim() in (3, 4) and window % 2 == 1
            and not ref.requires_grad)


def ssim(img: Tensor, ref: Tensor, window: int = 11, sigma: float = 1.5, *, backend: str = "auto") -> Tensor:
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, as 3DGS computes it).

    Args:
        img, ref: ``[H, W, C]`` or ``[B, H, W, C]`` images in ``[0, 1]``.
        window, sigma: side (zero padding ``window // 2``) and standard deviation of the Gaussian window.
        backend: ``"torch"`` (this module's reference: depthwise ``conv2d``, autograd backward),
            ``"cpu"`` (the fused native op of ``_ssim_cpu``: CPU float images of one shape, odd
            ``window``, ``ref`` not requiring a gradient) or ``"auto"`` (``"cpu"`` where it applies and
            the extension builds, the reference otherwise).

    Returns:
        Scalar tensor, differentiable w.r.t. ``img`` (and ``ref`` on the torch backend).
    """
    return ssim_and_l1(img, ref, window, sigma, backend=backend)[0]


def ssim_and_l1(img: Tensor, ref: Tensor, window: int = 11, sigma: float = 1.5, *,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Mean SSIM (as :func:`ssim`) and mean absolute difference ``|img - ref|`` of the same images: the two
    terms of the photometric loss, by one fused op forward and one backward on the ``cpu`` backend
    (arguments as :func:`ssim`; the reference is :func:`ssim` and ``F.l1_loss``).

    Returns:
        Two scalar tensors, differentiable w.r.t. ``img`` (and ``ref`` on the torch backend).
    """
    if _ssim_backend(img, ref, window, backend) == "torch":
        return _ssim_torch(img, ref, window, sigma), F.l1_loss(img, ref)
    from ._ssim_cpu import ssim_l1_cpu

    return ssim_l1_cpu(img, ref, window, sigma)


def _ssim_backend(img: Tensor, ref: Tensor, window: int, backend: str) -> str:
    """The concrete SSIM backend ``backend`` stands for with these images."""
    if backend not in SSIM_BACKENDS:
        raise ValueError(f"unknown SSIM backend {backend!r}; choose from {', '.join(SSIM_BACKENDS)}")
    if backend != "auto":
        return backend
    if _native_applies(img, ref, window):
        from . import _ssim_cpu

        if _ssim_cpu.usable("using the torch reference"):
            return "cpu"
    return "torch"
