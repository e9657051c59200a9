"""Videos of a camera over time (renders, weight maps), written atomically as H.264 mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..cameras import Camera
from ..data.video import write_video
from .evaluate import to_uint8

__all__ = ["render_video", "sweep_times"]


def sweep_times(times: list[float], num_frames: int | None) -> list[float]:
    """The scene's own times, or ``num_frames`` evenly spaced times in ``[0, 1]``."""
    if num_frames is None:
        return list(times) if len(times) > 1 else [0.0]
    return np.linspace(0.0, 1.0, num_frames).tolist() if num_frames > 1 else [0.0]


@torch.no_grad()
def render_video(render: Callable[[Camera], Tensor], camera: Camera, times: list[float], out: Path,
                 fps: float = 15.0) -> Path:
    """Render ``camera`` at each of ``times`` (``render(camera) -> [H, W, 3]``) into the mp4 ``out``."""
    frames = (to_uint8(render(camera.with_time(t))) for t in times)
    return write_video(out, frames, fps)
