"""The photometric loss every trainer uses (3DGS's L1 + D-SSIM)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..eval.metrics import ssim_and_l1

__all__ = ["photometric_loss"]


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float) -> Tensor:
    """``(1 - l) * L1 + l * (1 - SSIM)`` of ``[H, W, 3]`` images (on the CPU both terms come from one fused op,
    :func:`~moegs.eval.metrics.ssim_and_l1`)."""
    if ssim_lambda == 0:
        return F.l1_loss(render, target)
    s, l1 = ssim_and_l1(render, target)
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - s)
