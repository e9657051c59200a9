"""The viewer's settings, shared by ``moegs view`` and :func:`moegs.viewer.serve`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..moe.prune import DEFAULT_KEEP

__all__ = ["ViewerConfig"]


@dataclass
class ViewerConfig:
    # Address to listen on: loopback only by default; 0.0.0.0 serves the whole network.
    host: str = "127.0.0.1"
    # Port to listen on (0: a free one chosen by the system).
    port: int = 8080
    # Longest image side (pixels) of a frame once the camera is still.
    max_side: int = 512
    # Fraction of ``max_side`` rendered while the camera or the time moves.
    preview_scale: float = 0.35
    # Seconds without a change after which the preview is refined to ``max_side``.
    refine_after_s: float = 0.25
    # Playback speed in scene frames per second.
    fps: float = 8.0
    # JPEG quality of the frames sent to the browser (1-100).
    jpeg_quality: int = 90
    # Rasterizer backend (``auto``: cuda when present, else the C++ CPU one).
    backend: str = "auto"
    # Device of the model (``auto``: cuda when present).
    device: str = "auto"
    # Gate pruning (mixtures): share of the blend's contributions the kept Gaussians carry, and at most
    # how many training views measure the contributions.
    prune_keep: float = DEFAULT_KEEP
    prune_views: int = 12

    def check(self) -> None:
        """:class:`ConfigError` on a value the viewer cannot use."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be in 0..65535")
        if self.max_side < 8:
            raise ConfigError(f"--max-side {self.max_side}: must be at least 8 pixels")
        if not 0 < self.preview_scale <= 1:
            raise ConfigError(f"preview_scale {self.preview_scale}: must be in (0, 1]")
        if not 0 < self.prune_keep <= 1:
            raise ConfigError(f"prune_keep {self.prune_keep}: must be in (0, 1]")
        if self.fps <= 0:
            raise ConfigError(f"--fps {self.fps}: must be positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality {self.jpeg_quality}: must be in 1..100")
