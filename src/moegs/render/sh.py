"""Real spherical harmonics up to degree 3 (the 3DGS basis and sign convention)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["num_sh_bases", "eval_sh", "rgb_to_sh0"]

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (1, 4, 9 or 16)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in [0, 3], got {degree}")
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that reproduces colour ``rgb`` (``[..., 3]``)."""
    return (rgb - 0.5) / C0


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour.

    Args:
        degree: degree to use (``<=`` what ``coeffs`` holds; higher bands are ignored).
        coeffs: ``[N, K, 3]`` coefficients, ``K >= (degree + 1) ** 2``.
        dirs: ``[N, 3]`` unit viewing directions (camera centre to Gaussian).

    Returns:
        ``[N, 3]`` colour *before* the +0.5 offset and clamping.
    """
    if coeffs.shape[1] < num_sh_bases(degree):
        raise ValueError(f"degree {degree} needs {num_sh_bases(degree)} SH coefficients, got {coeffs.shape[1]}")
    out = C0 * coeffs[:, 0]
    if degree < 1:
        return out
    x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
    out = out - C1 * y * coeffs[:, 1] + C1 * z * coeffs[:, 2] - C1 * x * coeffs[:, 3]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + C2[0] * xy * coeffs[:, 4]
        + C2[1] * yz * coeffs[:, 5]
        + C2[2] * (2.0 * zz - xx - yy) * coeffs[:, 6]
        + C2[3] * xz * coeffs[:, 7]
        + C2[4] * (xx - yy) * coeffs[:, 8]
    )
    if degree < 3:
        return out
    return (
        out
        + C3[0] * y * (3 * xx - yy) * coeffs[:, 9]
        + C3[1] * xy * z * coeffs[:, 10]
        + C3[2] * y * (4 * zz - xx - yy) * coeffs[:, 11]
        + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[:, 12]
        + C3[4] * x * (4 * zz - xx - yy) * coeffs[:, 13]
        + C3[5] * z * (xx - yy) * coeffs[:, 14]
        + C3[6] * x * (xx - 3 * yy) * coeffs[:, 15]
    )
