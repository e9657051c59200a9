"""Image metrics: PSNR and SSIM (and the SSIM used by the D-SSIM training loss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim"]


def psnr(img: Tensor, ref: Tensor) -> float:
    """PSNR in dB of ``img`` against ``ref`` (``[..., H, W, 3]``, values in ``[0, 1]``)."""
    mse = F.mse_loss(img.detach().clamp(0, 1), ref.detach()).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(img: Tensor, ref: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, as 3DGS computes it).

    Args:
        img, ref: ``[H, W, C]`` or ``[B, H, W, C]`` images in ``[0, 1]``.

    Returns:
        Scalar tensor, differentiable w.r.t. ``img``.
    """
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    x, y = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x)
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x * mu_x
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y * mu_y
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return s.mean()
