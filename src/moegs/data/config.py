"""Options shared by every scene loader (one dataclass for CLI and Python)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

from .scene import DEFAULT_CACHE_BYTES

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """How to read a scene. ``None`` means "the format's own default"."""

    # Format name (see ``moegs.data.FORMATS``); None detects it from the folder's files.
    format: str | None = None
    # Image downscale factor (2 halves width and height). None: the literature's
    # default for the format (N3V 2 -> 1352x1014, D-NeRF 2 -> 400x400, others 1).
    downscale: float | None = None
    # Keep every k-th frame in time.
    frame_step: int = 1
    # Keep at most this many frames (after frame_step); None keeps all.
    max_frames: int | None = None
    # Byte budget of the decoded-frame cache.
    cache_bytes: int = DEFAULT_CACHE_BYTES
    # Composite RGBA images over white (True) or black (False); None: format default.
    white_background: bool | None = None
    # Physical camera ids held out for testing; None: format default (N3V: cam00).
    test_cameras: tuple[int, ...] | None = None
    # Number of random initial points when the data has no point cloud.
    num_random_points: int = 100_000
    # Seed for anything random a loader does (point sampling).
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` on values no loader can use."""
        if self.downscale is not None and not (self.downscale > 0 and math.isfinite(self.downscale)):
            raise ConfigError(f"downscale must be a positive number, got {self.downscale}")
        if self.frame_step < 1:
            raise ConfigError(f"frame_step must be at least 1, got {self.frame_step}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
