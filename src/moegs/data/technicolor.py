"""Format ``"technicolor"``: the Technicolor light-field video dataset (Sabater et al., "Dataset and
Pipeline for Multi-View Light-Field Video", CVPR Workshops 2017), as released by InterDigital and
used by Spacetime Gaussians (STG) and Ex4DGS.

Layout (one folder per sequence, a 4x4 rig of 16 cameras at 2048x1088)::

    Birthday/
      cameras_parameters.txt
      Birthday_undist_00001_00.png    <scene>_undist_<frame, 5 digits>_<camera, 2 digits>.png
      ...

``cameras_parameters.txt`` has one header line, then one row per camera, in
camera order (row ``i`` is camera ``i``), of space-separated numbers::

    f cu cv ar sk qw qx qy qz tx ty tz            (undistorted release, 12 columns)
    f cu cv ar sk d1 d2 qw qx qy qz tx ty tz      (original release, 14 columns)

``f`` is the focal length in pixels, ``(cu, cv)`` the principal point, ``ar``
the aspect ratio (``fy = ar * f``), ``sk`` the skew, ``d1, d2`` radial
distortion of the original (not undistorted) images, and ``(q, t)`` the
world-to-camera rotation (quaternion ``w, x, y, z``) and translation in
COLMAP's convention (OpenCV axes). Sources: STG's ``script/pre_technicolor.py``
(github.com/oppo-us-research/SpacetimeGaussians), which skips the header, takes
``fx = fy = f``, ``cx, cy = cu, cv`` and passes ``(qw, qx, qy, qz)`` and
``(tx, ty, tz)`` unchanged to COLMAP as image pose priors, with camera name
``cam{row:02d}``; and the column names ``f cu cv ar sk [d1 d2] qw qx qy qz tx ty
tz`` used by public extraction scripts of the release, which build the extrinsic
``[R(q) | t]`` and ``fy = ar * f`` from them. Skew and distortion are kept in
``Camera.metadata`` (moegs cameras are skew-free pinholes).

Split: STG evaluates Technicolor on camera 10 (``cam10``), training on the
other 15; that is the default ``test_cameras``. Frame ``k`` of the ``K`` kept
frames has time ``k / (K - 1)``. Every camera must have every frame between the
first and last frame number found. Initial points: as for N3V (a COLMAP
model or ``points3D.ply`` in the folder, else SfM on the first frame of the
training cameras); random points (``DataConfig.points="random"``) lie in the
camera frusta between depths 0.65 and 10 (HyperReel's Technicolor bounds).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..cameras import Camera
from ..errors import DataError
from .colmap import qvec_to_rotmat, rotmat_to_qvec
from .config import DataConfig
from .images import ImageFile, read_image_size
from .n3v import initial_points
from .scene import FrameCache, Scene, View

__all__ = ["detect", "load", "read_camera_parameters", "write_technicolor_scene", "DEFAULT_TEST_CAMERAS", "PARAMS_FILE"]

PARAMS_FILE = "cameras_parameters.txt"
DEFAULT_TEST_CAMERAS = (10,)
RANDOM_POINT_DEPTH = (0.65, 10.0)
_IMAGE = re.compile(r"^(?P<scene>.+?)_(?:undist_)?(?P<frame>\d{5})_(?P<cam>\d{2})\.png$")
_HEADER = "f cu cv ar sk qw qx qy qz tx ty tz"


def detect(path: Path) -> bool:
    """True for a folder with ``cameras_parameters.txt``."""
    return (path / PARAMS_FILE).is_file()


def read_camera_parameters(file: Path) -> list[dict]:
    """Rows of ``cameras_parameters.txt`` as dicts with keys ``f cu cv ar sk qvec tvec distortion``.

    ``qvec`` is ``[4]`` (w, x, y, z), ``tvec`` ``[3]``, both world-to-camera;
    ``distortion`` is ``{"d1", "d2"}`` for the 14-column (original) layout, else empty.
    """
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(file, f"cannot read: {e}") from e
    rows = []
    for ln, line in enumerate(lines[1:], start=2):  # line 1 is a header
        if not line.strip():
            continue
        try:
            v = [float(x) for x in line.split()]
        except ValueError as e:
            raise DataError(file, f"line {ln}: not numbers ({e})") from e
        if len(v) not in (12, 14):
            raise DataError(file, f"line {ln}: expected 12 ({_HEADER}) or 14 numbers, found {len(v)}")
        if not np.isfinite(v).all():
            raise DataError(file, f"line {ln}: NaN or inf")
        dist = {"d1": v[5], "d2": v[6]} if len(v) == 14 else {}
        q, t = v[-7:-3], v[-3:]
        if v[0] <= 0 or v[3] <= 0 or np.linalg.norm(q) < 1e-8:
            raise DataError(file, f"line {ln}: focal length and aspect ratio must be positive and the quaternion non-zero")
        rows.append({"f": v[0], "cu": v[1], "cv": v[2], "ar": v[3], "sk": v[4], "qvec": np.array(q), "tvec": np.array(t), "distortion": dist})
    if not rows:
        raise DataError(file, "no camera rows after the header line")
    return rows


def _frames_by_camera(path: Path) -> tuple[str, dict[int, dict[int, Path]]]:
    """Scene prefix and ``{camera: {frame number: file}}`` of the images in ``path``."""
    found: dict[int, dict[int, Path]] = {}
    prefixes = set()
    for p in path.glob("*.png"):
        m = _IMAGE.match(p.name)
        if m:
            prefixes.add(m["scene"])
            found.setdefault(int(m["cam"]), {})[int(m["frame"])] = p
    if not found:
        raise DataError(path, "no images named <scene>_undist_<frame:05d>_<camera:02d>.png")
    if len(prefixes) > 1:
        raise DataError(path, f"images of several sequences in one folder: {sorted(prefixes)}")
    return prefixes.pop(), found


def load(path: Path, config: DataConfig) -> Scene:
    """Read a Technicolor sequence folder into a :class:`Scene` (see the module docstring)."""
    path = Path(path)
    params = read_camera_parameters(path / PARAMS_FILE)
    prefix, found = _frames_by_camera(path)
    n_cams = len(params)
    extra = sorted(c for c in found if c >= n_cams)
    if extra or len(found) != n_cams:
        raise DataError(
            path / PARAMS_FILE,
            f"lists {n_cams} cameras but the images are of cameras {sorted(found)}" + (f" (camera {extra[0]} has no row)" if extra else ""),
        )
    first = min(min(f) for f in found.values())
    last = max(max(f) for f in found.values())
    for cam_id in range(n_cams):
        for fr in range(first, last + 1):
            if fr not in found[cam_id]:
                sample = next(iter(found[cam_id].values())).name
                name = f"{prefix}_undist_{fr:05d}_{cam_id:02d}.png" if "_undist_" in sample else f"{prefix}_{fr:05d}_{cam_id:02d}.png"
                raise DataError(path / name, f"missing: frames {first}..{last} exist for other cameras")
    if config.frame_step < 1 or (config.max_frames is not None and config.max_frames < 1):
        raise DataError(None, f"frame_step and max_frames must be at least 1 (got {config.frame_step}, {config.max_frames})")
    factor = 1.0 if config.downscale is None else float(config.downscale)
    if factor <= 0:
        raise DataError(None, f"downscale must be positive, got {factor}")

    cams = []
    for cam_id, p in enumerate(params):
        w, h = read_image_size(found[cam_id][first])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = qvec_to_rotmat(p["qvec"]), p["tvec"]
        cam = Camera(
            world_to_camera=torch.from_numpy(w2c).float(),
            fx=p["f"],
            fy=p["f"] * p["ar"],
            cx=p["cu"],
            cy=p["cv"],
            width=w,
            height=h,
            near=config.near_or(0.01),
            far=100.0,
            name=f"cam{cam_id:02d}",
            metadata={"skew": p["sk"], "distortion": p["distortion"]},
        )
        cams.append(cam.scaled(1.0 / factor) if factor != 1.0 else cam)

    kept = list(range(first, last + 1, config.frame_step))[: config.max_frames]
    K = len(kept)
    test_ids = set(DEFAULT_TEST_CAMERAS if config.test_cameras is None else config.test_cameras)
    train, test = [], []
    for cam_id, cam in enumerate(cams):
        for k, fr in enumerate(kept):
            view = View(cam.with_time(k / (K - 1) if K > 1 else 0.0), ImageFile(found[cam_id][fr], (cam.width, cam.height)), cam_id, k)
            (test if cam_id in test_ids else train).append(view)
    if not train:
        raise DataError(path, f"no training cameras left after holding out {sorted(test_ids)}")

    xyz, rgb, points_from = initial_points(path, cams, train, config, RANDOM_POINT_DEPTH)
    return Scene(
        name=path.name,
        format="technicolor",
        train_views=train,
        test_views=test,
        points=torch.from_numpy(np.asarray(xyz)).float().reshape(-1, 3),
        point_colors=torch.from_numpy(np.asarray(rgb)).float().reshape(-1, 3),
        background=torch.full((3,), 1.0 if config.white_background else 0.0),  # cpu: host-side scene data, moved by the trainers
        cache=FrameCache(config.cache_bytes),
        info={
            "cameras": n_cams,
            "frames_present": last - first + 1,
            "frame_numbers": f"{first}..{last}",
            "frames_used": K,
            "original_resolution": read_image_size(found[0][first]),
            "downscale": factor,
            "split": f"test cameras {sorted(test_ids)}",
            "points": points_from,
        },
    )


def write_technicolor_scene(
    root: str | Path,
    cameras: Sequence[Camera],
    frames: Sequence[Sequence[np.ndarray]],
    first_frame: int = 1,
) -> Path:
    """Write a sequence in the Technicolor undistorted layout (for tests and synthetic data).

    Args:
        root: the sequence folder; its name is the image-name prefix.
        cameras: the rig, camera ``i`` becomes row ``i`` (``ar = fy / fx``, zero skew).
        frames: ``frames[i][k]`` is camera ``i``'s ``[H, W, 3]`` uint8 image at frame ``first_frame + k``.
        first_frame: number of the first frame (the release starts at 1, Painter at 0).

    Returns:
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = [_HEADER]
    for cam in cameras:
        w2c = cam.world_to_camera.double().numpy()
        q, t = rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        lines.append(" ".join(repr(float(v)) for v in (cam.fx, cam.cx, cam.cy, cam.fy / cam.fx, 0.0, *q, *t)))
    (root / PARAMS_FILE).write_text("\n".join(lines) + "\n")
    for i, seq in enumerate(frames):
        for k, img in enumerate(seq):
            Image.fromarray(np.asarray(img, dtype=np.uint8)).save(root / f"{root.name}_undist_{first_frame + k:05d}_{i:02d}.png")
    return root
