"""The one place where a loader's initial point cloud is chosen (``DataConfig.points``).

- ``"auto"``: the folder's own points when it ships some (COLMAP model,
  ``points3D.ply``, ``init_pt_cld.npz``: the loader finds them), else SfM on
  the training cameras at ``SfmOptions.frames`` instants, merged
  (:func:`moegs.data.sfm.frame_points`, cached per instant), else -- when SfM
  finds nothing, or fewer than ``SfmOptions.min_points`` -- the loader's random points, with a warning;
- ``"sfm"``: SfM even when the folder ships points (an SfM failure is an error);
- ``"random"``: the loader's random points;
- anything else: a point file in the scene's world frame -- ``.ply``,
  a Dynamic3DGS ``.npz`` (array ``data``, ``[N, >=6]`` xyz rgb) or a COLMAP
  model folder (``points3D.bin``/``.txt``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from ..io import cache_dir
from ..cameras import Camera
from .config import DataConfig
from .images import ImageFile
from .scene import View

__all__ = ["PointCloud", "choose_points", "read_point_file", "read_npz_points", "first_views", "instant_views"]

# (positions [M, 3], colours [M, 3] in [0, 1], where they came from)
PointCloud = tuple[np.ndarray, np.ndarray, str]


def read_npz_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 3]`` positions and ``[N, 3]`` colours in ``[0, 1]`` of a Dynamic3DGS ``init_pt_cld.npz``."""
    try:
        with np.load(path) as f:
            if "data" not in f:
                raise DataError(path, "missing array 'data'")
            data = np.asarray(f["data"], dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read point cloud: {e}") from e
    if data.ndim != 2 or data.shape[1] < 6 or len(data) == 0:
        raise DataError(path, f"'data' must be an [N, 7] array (xyz rgb seg), got shape {data.shape}")
    if not np.isfinite(data[:, :6]).all():
        raise DataError(path, "'data' has NaN or infinite entries")
    rgb = data[:, 3:6]
    if rgb.max() > 1.0:  # stored as 0..255
        rgb = rgb / 255.0
    return data[:, :3], np.clip(rgb, 0.0, 1.0)


def read_point_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[M, 3]`` and colours ``[M, 3]`` of a ``.ply``, a Dynamic3DGS ``.npz`` or a COLMAP model folder."""
    from .colmap import read_model
    from .n3v import read_ply_points

    path = Path(path)
    if path.is_dir():
        pts = read_model(path).points
        if len(pts.xyz) == 0:
            raise DataError(path, "the COLMAP model has no points3D")
        return np.asarray(pts.xyz, np.float64), np.asarray(pts.rgb, np.float64) / 255.0
    if not path.is_file():
        raise DataError(path, "no such point file (DataConfig.points: auto, sfm, random or a .ply/.npz/COLMAP model)")
    if path.suffix.lower() == ".ply":
        return read_ply_points(path)
    if path.suffix.lower() == ".npz":
        return read_npz_points(path)
    raise DataError(path, "unknown point file type: expected .ply, .npz (Dynamic3DGS) or a COLMAP model folder")


def first_views(views: Sequence[View]) -> list[View]:
    """The earliest view of each camera (by ``camera_id``), in camera-id order."""
    first: dict[int, View] = {}
    for v in views:
        if v.camera_id not in first or v.frame < first[v.camera_id].frame:
            first[v.camera_id] = v
    return [first[k] for k in sorted(first)]


def instant_views(views: Sequence[View], count: int) -> list[list[View]]:
    """The views of ``count`` instants evenly spaced over the frames present (the first and, for
    ``count >= 2``, the last included), each a list of one view per camera in camera-id order.
    Fewer lists when the capture has fewer frames."""
    by_frame: dict[int, dict[int, View]] = {}
    for v in views:
        by_frame.setdefault(v.frame, {}).setdefault(v.camera_id, v)
    frames = sorted(by_frame)
    if not frames:
        return []
    picks = sorted({frames[round(i)] for i in np.linspace(0, len(frames) - 1, max(1, count))})
    return [[by_frame[f][c] for c in sorted(by_frame[f])] for f in picks]


def _full_resolution(view: View) -> tuple[np.ndarray, Camera]:
    """The view's image and camera at the image file's own resolution (SfM finds more points there
    than in a downscaled copy); other sources as loaded."""
    src = view.source
    if isinstance(src, ImageFile) and src.size is not None:
        image = ImageFile(src.path).load()
        h, w = image.shape[:2]
        cam = view.camera.scaled(w / view.camera.width)
        if (cam.width, cam.height) == (w, h):
            return image, cam
    return src.load(), view.camera


def choose_points(
    config: DataConfig,
    train_views: Sequence[View],
    shipped: Callable[[], PointCloud | None],
    random: Callable[[], PointCloud],
    file_to_world: np.ndarray | None = None,
) -> PointCloud:
    """Initial points of a scene according to ``config.points`` (module docstring).

    Args:
        config: the loader's config (``points``, ``sfm``).
        train_views: the training views; SfM uses one view per camera at each of ``config.sfm.frames``
            instants (:func:`instant_views`; image files at their own resolution, whatever the downscale).
        shipped: returns the folder's own points (in its files' frame), or ``None`` when it has none.
        random: returns the loader's random points (already in the scene's frame).
        file_to_world: ``[3, 3]`` linear map from the data files' world frame to the scene's
            (a reflection for a mirrored capture), applied to shipped and file points; None: identity.

    Returns:
        ``[M, 3]`` points, ``[M, 3]`` colours in ``[0, 1]``, and a line saying where they came from.
    """
    from .sfm import SfmError, frame_points

    def in_world(cloud: PointCloud) -> PointCloud:
        xyz, rgb, desc = cloud
        return (np.asarray(xyz, np.float64) @ file_to_world.T if file_to_world is not None else xyz), rgb, desc

    def sfm() -> PointCloud:
        clouds, failures = [], []
        for views in instant_views(train_views, config.sfm.frames):
            images, cameras = zip(*(_full_resolution(v) for v in views))
            try:
                clouds.append(frame_points(images, cameras, config.sfm))
            except SfmError as e:
                failures.append(e)
        if not clouds:
            raise failures[0] if failures else SfmError(None, "no training view to run SfM on")
        if len(clouds) == 1 and not failures:
            return clouds[0]
        xyz = np.concatenate([c[0] for c in clouds])
        rgb = np.concatenate([c[1] for c in clouds])
        counts = ", ".join(str(len(c[0])) for c in clouds)
        return xyz, rgb, (f"SfM at {len(clouds) + len(failures)} instants: {len(xyz)} points ({counts}"
                          f"{f'; {len(failures)} instants found none' if failures else ''}); cached in {cache_dir('sfm')}")

    choice = config.points
    if choice == "random":
        return random()
    if choice == "sfm":
        return sfm()
    if choice == "auto":
        cloud = shipped()
        if cloud is not None:
            return in_world(cloud)
        try:
            cloud = sfm()
            if len(cloud[0]) >= config.sfm.min_points:
                return cloud
            problem = f"SfM found only {len(cloud[0])} points (fewer than sfm.min_points = {config.sfm.min_points})"
        except SfmError as e:
            problem = str(e)
        xyz, rgb, desc = random()
        warnings.warn(f"{problem}; using {desc}", stacklevel=3)
        return xyz, rgb, f"{desc} ({problem})"
    xyz, rgb = read_point_file(choice)
    return in_world((xyz, rgb, f"{choice} ({len(xyz)} points)"))
