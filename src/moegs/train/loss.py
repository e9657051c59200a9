"""The photometric loss every trainer uses (3DGS's L1 + D-SSIM)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..eval.metrics import ssim

__all__ = ["photometric_loss"]


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float) -> Tensor:
    """``(1 - l) * L1 + l * (1 - SSIM)`` of ``[H, W, 3]`` images."""
    l1 = F.l1_loss(render, target)
    if ssim_lambda == 0:
        return l1
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(render, target))
