"""Options shared by every scene loader (one dataclass for CLI and Python)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError

from .scene import DEFAULT_CACHE_BYTES

__all__ = ["DataConfig", "SfmOptions", "POINT_SOURCES", "FRAME_STORE_MODES"]

# What ``DataConfig.points`` may name, besides a file path.
POINT_SOURCES = ("auto", "sfm", "random")
# What ``DataConfig.frame_store`` may name.
FRAME_STORE_MODES = ("auto", "store", "lazy")


@dataclass
class SfmOptions:
    """Structure from motion on frames of the training cameras (``moegs.data.sfm``): instants, features,
    matching, filtering."""

    # Triangulate at this many instants, evenly spaced over the capture (the first frame is always one),
    # and merge the points: what appears or moves later gets points too (Spacetime Gaussians triangulates
    # every frame for the same reason). 1: the first frame only, as 3DGS-style pipelines do.
    frames: int = 1

    # Images larger than this (longest side, pixels) are downscaled for feature extraction.
    max_image_size: int = 1600
    # SIFT features kept per image.
    max_features: int = 8192
    # SIFT detection threshold (COLMAP's default is 0.0067; lower finds more features in soft video frames).
    peak_threshold: float = 0.002
    # Known cameras: a match is kept when each keypoint is within this many pixels of the other's
    # epipolar line (the poses replace RANSAC's two-view geometry).
    max_epipolar_error: float = 4.0
    # Known cameras: Lowe's ratio test on SIFT descriptor distances (mutual nearest neighbours only;
    # looser than COLMAP's 0.8 because the epipolar check follows).
    max_ratio: float = 0.9
    # Keep points whose mean reprojection error is at most this (pixels).
    max_reprojection_error: float = 2.0
    # Keep points seen by at least this many cameras. 2 keeps two-view points: noisier, but about three
    # times as many on wide-baseline rigs, which trains better (COLMAP's own mapper uses 3).
    min_track_length: int = 2
    # Smallest angle (degrees) between two rays for a point to be triangulated.
    min_triangulation_angle: float = 1.5
    # points="auto" only: fewer SfM points than this cannot cover a scene, and random points are used
    # instead (measured on the generated scene at 160x120: its ~890 SfM points train 0.3-1.4 dB below
    # random points, where Panoptic basketball's ~2.4k gain 2.3 dB). "sfm" always keeps what SfM finds.
    min_points: int = 1500
    # ``moegs prepare``: one focal length for every video (True) or one per video (False).
    shared_intrinsics: bool = True

    def check(self) -> None:
        if self.min_points < 0:
            raise ConfigError(f"sfm.min_points must be >= 0, got {self.min_points}")
        if self.frames < 1:
            raise ConfigError(f"sfm.frames must be at least 1, got {self.frames}")
        if self.max_image_size < 64 or self.max_features < 64:
            raise ConfigError(f"sfm.max_image_size and sfm.max_features must be at least 64, got {self.max_image_size}, {self.max_features}")
        if not (self.max_reprojection_error > 0 and self.max_epipolar_error > 0 and self.min_triangulation_angle >= 0):
            raise ConfigError("sfm.max_reprojection_error and sfm.max_epipolar_error must be positive, "
                              "sfm.min_triangulation_angle >= 0")
        if not self.peak_threshold > 0:
            raise ConfigError(f"sfm.peak_threshold must be positive, got {self.peak_threshold}")
        if not 0 < self.max_ratio <= 1:
            raise ConfigError(f"sfm.max_ratio must be in (0, 1], got {self.max_ratio}")
        if self.min_track_length < 2:
            raise ConfigError(f"sfm.min_track_length must be at least 2, got {self.min_track_length}")


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
    # Video frames: "store" decodes each video once into an uncompressed frame store on disk (fast
    # random access, see moegs.data.framestore), "lazy" decodes on demand from the videos, "auto"
    # uses the store unless every video is intra-only.
    frame_store: str = "auto"
    # Folder of the frame stores; None: the user cache ($MOEGS_CACHE_DIR/frames, ~/.cache/moegs/frames).
    frame_store_dir: str | None = None
    # Composite RGBA images over white (True) or black (False); None: format default.
    white_background: bool | None = None
    # Physical camera ids held out for testing; None: format default (N3V: cam00).
    test_cameras: tuple[int, ...] | None = None
    # Initial points: "auto" (the folder's own point cloud, else SfM on the first frame of the
    # training cameras), "sfm" (always SfM), "random" (in the camera frusta) or a file
    # (.ply, Dynamic3DGS .npz, or a COLMAP model folder) in the scene's world frame.
    points: str = "auto"
    # Settings of the SfM run that "auto" and "sfm" make (results cached in the user cache).
    sfm: SfmOptions = field(default_factory=SfmOptions)
    # Number of random initial points when the data has no point cloud.
    num_random_points: int = 100_000
    # Seed for anything random a loader does (point sampling).
    seed: int = 0
    # Near clipping depth of every camera, in scene units, for training, rendering and the initial points
    # alike; None: the format's own (N3V's near bound, D-NeRF 0.1, Panoptic a third of each camera's
    # distance to where the rig looks, others 0.01).
    near: float | None = None

    def near_or(self, default: float) -> float:
        """The near plane a loader gives a camera whose format says ``default``: :attr:`near` when set."""
        return float(default) if self.near is None else float(self.near)

    def check(self) -> None:
        """Raise :class:`ConfigError` on values no loader can use."""
        if self.downscale is not None and not (self.downscale > 0 and math.isfinite(self.downscale)):
            raise ConfigError(f"downscale must be a positive number, got {self.downscale}")
        if self.near is not None and not (self.near > 0 and math.isfinite(self.near)):
            raise ConfigError(f"near must be a positive number, got {self.near}")
        if self.frame_step < 1:
            raise ConfigError(f"frame_step must be at least 1, got {self.frame_step}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
        if self.frame_store not in FRAME_STORE_MODES:
            raise ConfigError(f"frame_store must be one of {', '.join(FRAME_STORE_MODES)}, got {self.frame_store!r}")
        if not self.points:
            raise ConfigError(f"points must be one of {', '.join(POINT_SOURCES)} or a file, got an empty string")
        self.sfm.check()
