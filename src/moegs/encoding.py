"""Fourier features: the one sinusoidal encoding every network in moegs uses (positions, times)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fourier_features", "time_features"]


def fourier_features(x: Tensor, num_freqs: int, scale: float = 1.0) -> Tensor:
    """NeRF's encoding ``[x, sin(2^0 s x), cos(2^0 s x), ..., sin(2^(L-1) s x), cos(2^(L-1) s x)]``.

    Args:
        x: ``[..., D]``.
        num_freqs: ``L`` (0 returns ``x``).
        scale: ``s``, the base frequency (``pi`` for inputs in ``[0, 1]``).

    Returns:
        ``[..., D * (1 + 2 L)]``, frequency-major (sin of every channel, then cos, per frequency),
        as NeRF's and Deformable-3DGS's reference code order it.
    """
    if num_freqs == 0:
        return x
    freqs = scale * 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)  # [L]
    xf = x[..., None, :] * freqs[:, None]  # [..., L, D]
    enc = torch.stack((torch.sin(xf), torch.cos(xf)), dim=-2)  # [..., L, 2, D]
    return torch.cat((x, enc.flatten(-3)), dim=-1)


def time_features(t: float | Tensor, num_freqs: int) -> Tensor:
    """``[1 + 2 L]`` features ``(t, sin(2^j pi t), cos(2^j pi t))`` of a time in ``[0, 1]``
    (``[..., 1 + 2 L]`` for a tensor of times ``[...]``; float32 for a Python float)."""
    t = t if isinstance(t, Tensor) else torch.tensor(float(t))  # cpu: callers move it with .to(x)
    return fourier_features(t[..., None], num_freqs, math.pi)
