"""D-NeRF monocular synthetic scenes (format ``"dnerf"``).

Layout: ``transforms_train.json``, ``transforms_val.json`` and
``transforms_test.json`` beside image folders. Each json holds
``camera_angle_x`` (horizontal field of view, radians) and ``frames``, each
with ``file_path`` (relative to the scene, usually without extension, e.g.
``"./train/r_000"``), ``time`` and ``transform_matrix``.

Conventions converted here:

* ``transform_matrix`` is camera-to-world in the Blender/OpenGL convention
  (camera x right, y up, z backward). Flipping the camera's y and z axes,
  ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``, gives OpenCV axes (x right, y
  down, z forward); moegs stores its inverse, world-to-camera. The camera
  centre is unchanged: the matrix's translation column.
* Intrinsics: ``fx = 0.5 * W / tan(0.5 * camera_angle_x)`` (``fy`` from
  ``camera_angle_y`` when present, else ``fy = fx``), principal point at the
  image centre ``(W / 2, H / 2)``, all at the loaded resolution.
* Times are kept as given when they all lie in ``[0, 1]`` (they do in
  D-NeRF); otherwise they are mapped linearly from ``[min, max]`` over all
  splits to ``[0, 1]``. A scene whose frames carry no ``time`` at all (a
  static NeRF-synthetic scene) gets time 0 everywhere.

Defaults as in the literature: images downscaled by 2 (800 -> 400), RGBA
composited over white, and, as there is no point cloud, random initial points
in the cube ``[-1.3, 1.3]^3`` with grey colours. The train split is
``transforms_train.json``, the test split ``transforms_test.json``; the
validation views are not loaded (their count is in ``scene.info``).
``DataConfig.frame_step`` / ``max_frames`` select training frames in file
order; when ``max_frames`` cuts the training time range short, test views
later than the last kept training time are dropped. ``DataConfig.test_cameras``
does not apply (one moving camera).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cameras import Camera
from ..errors import DataError
from .config import DataConfig
from .images import ImageFile, read_image_size
from .scene import FrameCache, Scene, View

__all__ = [
    "DEFAULT_DOWNSCALE",
    "MAX_RANDOM_POINTS",
    "POINT_CUBE_HALF_SIZE",
    "blender_to_opencv_w2c",
    "detect",
    "load",
    "random_cube_points",
]

DEFAULT_DOWNSCALE = 2.0
# Half side of the cube of random initial points (D-NeRF-based Gaussian methods).
POINT_CUBE_HALF_SIZE = 1.3
# At most this many random initial points, whatever DataConfig.num_random_points asks.
MAX_RANDOM_POINTS = 1_000_000
NEAR, FAR = 0.1, 100.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Tolerance on R^T R = I for the rotation part of a transform_matrix.
_ORTHONORMAL_TOL = 1e-3

_BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def detect(path: Path) -> bool:
    """True if ``path`` holds a D-NeRF scene (a ``transforms_train.json``)."""
    return (Path(path) / "transforms_train.json").is_file()


def blender_to_opencv_w2c(c2w_blender: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``[4, 4]`` from a Blender/OpenGL camera-to-world ``[4, 4]``."""
    return np.linalg.inv(np.asarray(c2w_blender, dtype=np.float64) @ _BLENDER_TO_OPENCV)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot parse json: {e}") from e
    if not isinstance(data, dict):
        raise DataError(path, "expected a json object at the top level")
    return data


def _angle(meta: dict[str, Any], key: str, path: Path) -> float:
    try:
        a = float(meta[key])
    except KeyError:
        raise DataError(path, f"missing key {key!r}") from None
    except (TypeError, ValueError):
        raise DataError(path, f"{key} is not a number: {meta[key]!r}") from None
    if not (0.0 < a < math.pi):
        raise DataError(path, f"{key} must be a field of view in (0, pi) radians, got {a}")
    return a


def _image_path(root: Path, file_path: str, json_path: Path, index: int) -> Path:
    """The image of frame ``index``: ``file_path`` as is if it has an image suffix, else with one added."""
    base = root / file_path
    if base.suffix.lower() in _IMAGE_SUFFIXES:
        candidates = [base]
    else:
        candidates = [base.with_name(base.name + s) for s in _IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(candidates[0], f"image file is missing (frame {index} of {json_path.name})")


def _matrix(value: Any, json_path: Path, index: int) -> np.ndarray:
    """``[4, 4]`` float64 camera-to-world of frame ``index``; validated (finite, rigid)."""
    where = f"frame {index}: transform_matrix"
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(json_path, f"{where} is not a numeric matrix") from None
    if m.shape == (3, 4):
        m = np.vstack((m, [0.0, 0.0, 0.0, 1.0]))
    if m.shape != (4, 4):
        raise DataError(json_path, f"{where} has shape {m.shape}, expected 4x4")
    if not np.isfinite(m).all():
        raise DataError(json_path, f"{where} has NaN or infinite entries")
    R = m[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > _ORTHONORMAL_TOL or np.linalg.det(R) < 0:
        raise DataError(json_path, f"{where} is not a rigid transform (rotation part is not a rotation)")
    return m


def _read_split(root: Path, split: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    path = root / f"transforms_{split}.json"
    meta = _read_json(path)
    frames = meta.get("frames")
    if frames is None:
        raise DataError(path, "missing key 'frames'")
    if not isinstance(frames, list):
        raise DataError(path, "'frames' must be a list")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DataError(path, f"frame {i} is not an object")
        for key in ("file_path", "transform_matrix"):
            if key not in fr:
                raise DataError(path, f"frame {i} is missing key {key!r}")
    return path, meta, frames


def _raw_times(frames: list[dict[str, Any]], path: Path) -> list[float | None]:
    out: list[float | None] = []
    for i, fr in enumerate(frames):
        if "time" not in fr:
            out.append(None)
            continue
        try:
            t = float(fr["time"])
        except (TypeError, ValueError):
            raise DataError(path, f"frame {i}: time is not a number: {fr['time']!r}") from None
        if not math.isfinite(t):
            raise DataError(path, f"frame {i}: time is not finite")
        out.append(t)
    return out


def random_cube_points(
    num: int, half_size: float = POINT_CUBE_HALF_SIZE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` uniform random points in ``[-half_size, half_size]^3`` and their grey colours.

    Returns:
        points ``[num, 3]`` float32 and colours ``[num, 3]`` float32 (all 0.5).
    """
    g = torch.Generator().manual_seed(int(seed))
    points = (torch.rand(num, 3, generator=g) * 2.0 - 1.0) * half_size  # cpu: host-side scene data, moved by the trainers
    return points, torch.full((num, 3), 0.5)  # cpu: host-side scene data, moved by the trainers


def _normalised_times(raw: dict[str, list[float | None]], paths: dict[str, Path]) -> tuple[dict[str, list[float]], str]:
    """Per split, the frames' times in ``[0, 1]`` (see the module docstring), and how they were obtained."""
    flat = [t for ts in raw.values() for t in ts]
    given = [t for t in flat if t is not None]
    if not given:
        return {s: [0.0] * len(ts) for s, ts in raw.items()}, "static (no 'time' keys)"
    if len(given) != len(flat):
        s, i = next((s, i) for s, ts in raw.items() for i, t in enumerate(ts) if t is None)
        raise DataError(paths[s], f"frame {i} is missing key 'time' (other frames have one)")
    lo, hi = min(given), max(given)
    if lo >= 0.0 and hi <= 1.0:
        return {s: [float(t) for t in ts] for s, ts in raw.items()}, "as given"
    span = hi - lo if hi > lo else 1.0
    return {s: [(float(t) - lo) / span for t in ts] for s, ts in raw.items()}, f"rescaled from [{lo:g}, {hi:g}]"


def _split_views(
    root: Path,
    json_path: Path,
    meta: dict[str, Any],
    frames: list[dict[str, Any]],
    indices: list[int],
    times: list[float],
    downscale: float,
    near: float,
) -> list[View]:
    """Views of the frames ``indices`` of one split, cameras at the image size divided by ``downscale``, clipped
    at ``near``."""
    ax = _angle(meta, "camera_angle_x", json_path)
    ay = _angle(meta, "camera_angle_y", json_path) if "camera_angle_y" in meta else None
    views: list[View] = []
    size: tuple[int, int] | None = None
    for i in indices:
        fr = frames[i]
        img = _image_path(root, str(fr["file_path"]), json_path, i)
        c2w = _matrix(fr["transform_matrix"], json_path, i)
        if size is None:  # one size per split, as Blender renders them
            size = read_image_size(img)
        w, h = size
        fx = 0.5 * w / math.tan(0.5 * ax)
        fy = fx if ay is None else 0.5 * h / math.tan(0.5 * ay)
        cam = Camera(
            world_to_camera=torch.from_numpy(blender_to_opencv_w2c(c2w)).float(),
            fx=fx, fy=fy, cx=0.5 * w, cy=0.5 * h, width=w, height=h,
            near=near, far=FAR, time=times[i],
            name=img.relative_to(root).with_suffix("").as_posix(),
        )
        if downscale != 1.0:
            cam = cam.scaled(1.0 / downscale)
        views.append(View(camera=cam, source=ImageFile(img, (cam.width, cam.height)), camera_id=0, frame=i))
    return views


def load(path: Path, config: DataConfig) -> Scene:
    """Read the D-NeRF scene in folder ``path`` (see the module docstring for conventions)."""
    root = Path(path)
    downscale = DEFAULT_DOWNSCALE if config.downscale is None else float(config.downscale)
    config.check()
    white = True if config.white_background is None else bool(config.white_background)

    splits = {s: _read_split(root, s) for s in ("train", "test")}
    paths = {s: p for s, (p, _, _) in splits.items()}
    val_json = root / "transforms_val.json"
    num_val = len(_read_json(val_json).get("frames") or []) if val_json.is_file() else 0
    times, time_note = _normalised_times({s: _raw_times(fr, p) for s, (p, _, fr) in splits.items()}, paths)

    train_idx = list(range(len(splits["train"][2])))[:: config.frame_step][: config.max_frames]
    if not train_idx:
        raise DataError(paths["train"], "lists no frames")
    near = config.near_or(NEAR)
    train_views = _split_views(root, *splits["train"], train_idx, times["train"], downscale, near)
    test_views = _split_views(root, *splits["test"], list(range(len(splits["test"][2]))), times["test"], downscale, near)
    if config.max_frames is not None:  # evaluate only within the trained time range
        t_max = max(v.time for v in train_views)
        test_views = [v for v in test_views if v.time <= t_max + 1e-9]

    num_points = max(1, min(int(config.num_random_points), MAX_RANDOM_POINTS))
    points, colors = random_cube_points(num_points, POINT_CUBE_HALF_SIZE, config.seed)
    info = {
        "train_frames": len(splits["train"][2]),
        "test_frames": len(splits["test"][2]),
        "val_frames_unused": num_val,
        "views_loaded": f"{len(train_views)} train, {len(test_views)} test",
        "times": time_note,
        "downscale": downscale,
        "original_resolution": read_image_size(train_views[0].source.path),
        "initial_points": f"{num_points} random in [-{POINT_CUBE_HALF_SIZE}, {POINT_CUBE_HALF_SIZE}]^3",
    }
    return Scene(
        name=root.resolve().name,
        format="dnerf",
        train_views=train_views,
        test_views=test_views,
        points=points,
        point_colors=colors,
        background=torch.ones(3) if white else torch.zeros(3),  # cpu: host-side scene data, moved by the trainers
        cache=FrameCache(config.cache_bytes),
        info=info,
    )
