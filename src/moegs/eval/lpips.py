"""LPIPS (Zhang et al., CVPR 2018), AlexNet variant, computed only from weights found locally.

moegs never downloads weights. Put one file holding the torchvision AlexNet
``features.*`` tensors and the LPIPS v0.1 linear heads ``lin{0..4}.model.1.weight``
(the layout of the official ``lpips`` package's ``alex.pth`` merged with
torchvision's ``alexnet`` state dict) at ``$MOEGS_LPIPS_WEIGHTS`` or
``~/.cache/moegs/lpips_alex.pt``. Without it, LPIPS is reported as skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "lpips_weights_path", "load_lpips"]

_CHANNELS = (64, 192, 384, 256, 256)
# ImageNet-style input scaling of the official implementation (inputs in [-1, 1]).
_SHIFT = torch.tensor([-0.030, -0.088, -0.188])  # cpu: constants, moved to the input's device at use
_SCALE = torch.tensor([0.458, 0.448, 0.450])  # cpu: constants, moved to the input's device at use


def lpips_weights_path() -> Path:
    env = os.environ.get("MOEGS_LPIPS_WEIGHTS")
    return Path(env) if env else Path.home() / ".cache" / "moegs" / "lpips_alex.pt"


class LPIPS(nn.Module):
    """LPIPS distance with an AlexNet backbone (torchvision layer layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        self.taps = (1, 4, 7, 9, 11)  # ReLU outputs compared by LPIPS
        for i, c in enumerate(_CHANNELS):
            self.add_module(f"lin{i}", nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)))
        self.register_buffer("shift", _SHIFT.view(1, 3, 1, 1))
        self.register_buffer("scale", _SCALE.view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _feats(self, x: Tensor) -> list[Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, img: Tensor, ref: Tensor) -> Tensor:
        """Distance between ``[H, W, 3]`` images in ``[0, 1]`` (scalar tensor)."""
        x = img.permute(2, 0, 1)[None] * 2 - 1
        y = ref.permute(2, 0, 1)[None] * 2 - 1
        total = x.new_zeros(())
        for i, (fx, fy) in enumerate(zip(self._feats(x), self._feats(y))):
            total = total + getattr(self, f"lin{i}")((fx - fy) ** 2).mean()
        return total


def load_lpips(path: Path | None = None) -> tuple[LPIPS | None, str]:
    """``(model, note)``: the model if its weights are found locally, else ``None`` and why."""
    path = path or lpips_weights_path()
    if not path.is_file():
        return None, f"LPIPS skipped: no weights at {path} (set MOEGS_LPIPS_WEIGHTS)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = LPIPS()
        missing = model.load_state_dict(state, strict=False).missing_keys
        missing = [k for k in missing if k not in ("shift", "scale")]
        if missing:
            return None, f"LPIPS skipped: {path} lacks {', '.join(missing[:3])}"
    except Exception as e:  # unreadable file: report, never crash an evaluation
        return None, f"LPIPS skipped: {path} unreadable ({type(e).__name__})"
    return model, f"LPIPS (AlexNet) from {path}"
