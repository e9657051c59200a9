"""Real spherical harmonics up to degree 3 (the 3DGS basis and sign convention)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["num_sh_bases", "sh_basis", "eval_sh", "rgb_to_sh0"]

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


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """``[N, (degree + 1) ** 2]`` real SH basis (3DGS sign convention) at unit directions ``dirs`` ``[N, 3]``."""
    num_sh_bases(degree)
    x, y, z = dirs.unbind(-1)
    cols = [torch.full_like(x, C0)]
    if degree >= 1:
        cols += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        cols += [C2[0] * xy, C2[1] * yz, C2[2] * (2.0 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(cols, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour: the ``[N, B]`` basis contracted with the coefficients in one product.

    Args:
        degree: degree to use (``<=`` what ``coeffs`` holds; higher bands are ignored).
        coeffs: ``[N, K, 3]`` coefficients, ``K >= (degree + 1) ** 2``.
        dirs: ``[N, 3]`` unit viewing directions (camera centre to Gaussian).

    Returns:
        ``[N, 3]`` colour *before* the +0.5 offset and clamping.
    """
    nb = num_sh_bases(degree)
    if coeffs.shape[1] < nb:
        raise ValueError(f"degree {degree} needs {nb} SH coefficients, got {coeffs.shape[1]}")
    dt = torch.promote_types(coeffs.dtype, dirs.dtype)
    basis = sh_basis(degree, dirs.to(dt))
    return torch.bmm(basis[:, None, :], coeffs[:, :nb].to(dt)).squeeze(1)
