"""CMU Panoptic scenes as prepared by Dynamic 3D Gaussians (format ``"panoptic"``).

Layout: ``train_meta.json`` and ``test_meta.json``, images in
``ims/<camera>/<frame>.jpg``, segmentation masks in ``seg/`` (not used by
moegs), and optionally ``init_pt_cld.npz``. Each meta json holds ``w``, ``h``
(image size) and, per listed timestep, one entry per camera of that split:
``k`` (``[3, 3]`` intrinsics, pixels), ``w2c`` (``[4, 4]`` world-to-camera,
already OpenCV: x right, y down, z forward), ``fn`` (image path relative to
``ims/``) and ``cam_id``. The train split is ``train_meta.json``'s cameras,
the test split ``test_meta.json``'s, unless ``DataConfig.test_cameras`` names
the held-out camera ids (then both files' cameras are pooled and split by id).

Missing frames: public copies often list every timestep (150) but ship only
some of them. A timestep is *present* when every image listed for it, in both
files, is on disk; the present timesteps are loaded and the others skipped
with a single :class:`MissingFramesWarning` giving the counts. Loading fails
only when no timestep is present.

Time normalisation: over the timesteps actually loaded (after
``frame_step`` / ``max_frames``), ``t = (f - f_first) / (f_last - f_first)``
for listed frame index ``f``; for consecutive timesteps this is
``t = i / (n - 1)``, and a gap keeps its true length in time. ``scene.info``
records the listed, present and loaded counts.

Initial points (``DataConfig.points``, see :mod:`moegs.data.points`): by
default ``init_pt_cld.npz`` (key ``"data"``: ``[N, 7]`` xyz, rgb in ``[0, 1]``,
segmentation label) when present, else SfM on the first loaded timestep of the
training cameras. Random points (``points="random"``, or when SfM finds none)
are uniform around the point the training cameras look at, keeping those seen
by the most of them (the overlap of their view frusta), with grey colours.

Near plane: each camera clips at a third of its distance to the point the rig looks at
(:func:`axes_center`), at least 0.2, so that the dome's wall, on which the cameras sit and which the
training cameras see, is not rendered in front of a camera (``DataConfig.near`` sets one value instead).

Mirrored captures: some public copies store every camera rotation with
determinant -1 (the world frame is a reflection of a right-handed one). Such a
scene is loaded with its world reflected back, ``x -> -x`` (each ``w2c`` is
right-multiplied by ``diag(-1, 1, 1, 1)`` and the points of ``init_pt_cld.npz``
have their x negated): camera coordinates, hence every image, are unchanged.
One warning says so and ``info["world_frame"]`` records it. Rotations of mixed
sign, or not orthonormal, are an error.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cameras import Camera
from ..errors import ConfigError, DataError, MissingFramesWarning
from .config import DataConfig
from .images import ImageFile
from .points import choose_points, first_views, read_npz_points
from .scene import FrameCache, Scene, View

__all__ = [
    "DEFAULT_DOWNSCALE",
    "MAX_RANDOM_POINTS",
    "MissingFramesWarning",
    "axes_center",
    "detect",
    "frustum_overlap_points",
    "load",
]

DEFAULT_DOWNSCALE = 1.0
# At most this many random initial points, whatever DataConfig.num_random_points asks.
MAX_RANDOM_POINTS = 1_000_000
# Random candidates drawn per kept point when sampling the frusta overlap.
_CANDIDATES_PER_POINT = 8
# Near plane. The rig's cameras sit on the dome's wall, which the training cameras see and the experts
# reconstruct, so the wall's Gaussians are within a few tenths of every camera and a held-out camera looks
# through them. Dynamic3DGS's rasterizer (diff-gaussian-rasterization) culls at depth 0.2, which is not
# enough here: static and keyframe experts trained on basketball render test camera 0 as fog at 0.2, and
# all three experts gain 2.1 to 3.3 dB test PSNR with the cut at a third of the distance to the dome's
# centre (the README's Panoptic figures: `moegs pipeline` with and without `--near 0.2`). Each camera is clipped at NEAR_FRACTION of its distance
# to the point the rig looks at, and never nearer than NEAR_MIN.
NEAR_FRACTION = 1.0 / 3.0
NEAR_MIN, FAR = 0.2, 100.0
_KEYS = ("w", "h", "k", "w2c", "fn", "cam_id")
# Tolerance on R^T R = I for the rotation part of a w2c matrix.
_ORTHONORMAL_TOL = 1e-3
# The reflection x -> -x that brings a mirrored capture's world frame back to a right-handed one.
MIRROR = np.diag([-1.0, 1.0, 1.0])


def detect(path: Path) -> bool:
    """True if ``path`` holds a Dynamic3DGS/Panoptic scene (a ``train_meta.json``)."""
    return (Path(path) / "train_meta.json").is_file()


@dataclass(frozen=True)
class _Entry:
    """One listed image: a camera of a split at a timestep."""

    frame: int
    cam_id: int
    K: np.ndarray  # [3, 3]
    w2c: np.ndarray  # [4, 4]
    image: Path


def _read_meta(root: Path, name: str) -> tuple[int, int, list[list[_Entry]]]:
    """``(width, height, entries[timestep][camera])`` of ``root/name``, validated."""
    path = root / name
    if not path.is_file():
        raise DataError(path, "file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot parse json: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(path, "expected a json object at the top level")
    for key in _KEYS:
        if key not in meta:
            raise DataError(path, f"missing key {key!r}")
    try:
        w, h = int(meta["w"]), int(meta["h"])
    except (TypeError, ValueError):
        raise DataError(path, f"w and h must be integers, got {meta['w']!r}, {meta['h']!r}") from None
    if w < 1 or h < 1:
        raise DataError(path, f"image size must be positive, got {w}x{h}")
    per_t = {k: meta[k] for k in ("k", "w2c", "fn", "cam_id")}
    T = len(per_t["fn"]) if isinstance(per_t["fn"], list) else -1
    if T < 1 or any(not isinstance(v, list) or len(v) != T for v in per_t.values()):
        raise DataError(path, "k, w2c, fn and cam_id must be non-empty lists with one entry per timestep")
    entries: list[list[_Entry]] = []
    for t in range(T):
        rows = [per_t[k][t] for k in ("k", "w2c", "fn", "cam_id")]
        if any(not isinstance(r, list) for r in rows) or len({len(r) for r in rows}) != 1:
            raise DataError(path, f"timestep {t}: k, w2c, fn and cam_id must be lists of equal length")
        ks, w2cs, fns, cams = rows
        entries.append([_entry(path, t, c, ks[c], w2cs[c], fns[c], cams[c], root) for c in range(len(fns))])
    return w, h, entries


def _entry(path: Path, t: int, c: int, k: Any, w2c: Any, fn: Any, cam: Any, root: Path) -> _Entry:
    where = f"timestep {t}, camera {c}"
    try:
        K = np.asarray(k, dtype=np.float64)
        M = np.asarray(w2c, dtype=np.float64)
        cam_id = int(cam)
    except (TypeError, ValueError):
        raise DataError(path, f"{where}: k, w2c and cam_id must be numeric") from None
    if K.shape != (3, 3) or M.shape != (4, 4):
        raise DataError(path, f"{where}: k must be 3x3 and w2c 4x4, got {K.shape} and {M.shape}")
    if not (np.isfinite(K).all() and np.isfinite(M).all()):
        raise DataError(path, f"{where}: k or w2c has NaN or infinite entries")
    R = M[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > _ORTHONORMAL_TOL:
        raise DataError(path, f"{where}: w2c is not a rigid transform (rotation part is not orthonormal)")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DataError(path, f"{where}: focal lengths in k must be positive")
    if not isinstance(fn, str) or not fn:
        raise DataError(path, f"{where}: fn must be a file name, got {fn!r}")
    return _Entry(frame=t, cam_id=cam_id, K=K, w2c=M, image=root / "ims" / fn)


def axes_center(cameras: list[Camera]) -> Tensor:
    """``[3]`` point closest (least squares) to the optical axes of ``cameras``: where a rig looks.

    Directions along which the axes do not constrain it (parallel axes) fall
    back to the mean camera centre, through a small ridge term.
    """
    centers = torch.stack([c.center for c in cameras]).double()  # [C, 3]
    dirs = torch.stack([c.R[2] for c in cameras]).double()  # [C, 3] optical axes (camera +z in world)
    proj = torch.eye(3, dtype=torch.float64) - dirs[:, :, None] * dirs[:, None, :]  # cpu: host-side scene data, moved by the trainers; [C, 3, 3]
    ridge = 1e-6 * len(cameras)
    A = proj.sum(0) + ridge * torch.eye(3, dtype=torch.float64)  # cpu: host-side scene data, moved by the trainers
    b = (proj @ centers[:, :, None]).sum(0)[:, 0] + ridge * centers.mean(0)
    return torch.linalg.solve(A, b).float()


def _clip_near(views: dict[str, list[View]], near_all: float | None) -> dict[str, list[View]]:
    """``views`` with each camera's near plane at ``near_all``, or when ``None`` at ``NEAR_FRACTION`` of its
    distance to :func:`axes_center` of the whole rig (every camera of both splits: where the dome looks), at
    least ``NEAR_MIN``."""
    rig = {v.camera_id: v.camera for split in views.values() for v in split}
    if near_all is not None:
        near = dict.fromkeys(rig, near_all)
    else:
        center = axes_center(list(rig.values()))
        near = {k: max(NEAR_MIN, NEAR_FRACTION * float((cam.center - center).norm())) for k, cam in rig.items()}
    return {split: [dataclasses.replace(v, camera=dataclasses.replace(v.camera, near=near[v.camera_id]))
                    for v in vs] for split, vs in views.items()}


def frustum_overlap_points(cameras: list[Camera], num: int, seed: int = 0) -> Tensor:
    """``num`` random points in the region most of ``cameras`` see.

    Candidates are drawn uniformly in the cube centred on :func:`axes_center`
    whose half side is the largest camera distance from it (for a dome rig,
    the cube around the dome); of the ``_CANDIDATES_PER_POINT * num``
    candidates, the ``num`` seen (in front of the camera, inside its image) by
    the most cameras are kept.

    Returns:
        ``[num, 3]`` float32 world points.
    """
    g = torch.Generator().manual_seed(int(seed))
    center = axes_center(cameras).double()
    centers = torch.stack([c.center for c in cameras]).double()  # [C, 3]
    half = (centers - center).norm(dim=-1).max().clamp_min(1e-6)
    cand = center + half * (2.0 * torch.rand(num * _CANDIDATES_PER_POINT, 3, generator=g, dtype=torch.float64) - 1.0)  # cpu: host-side scene data, moved by the trainers
    seen = torch.zeros(len(cand), dtype=torch.int64)  # cpu: host-side scene data, moved by the trainers
    for cam in cameras:
        uv, z = cam.project(cand)
        inside = (z > cam.near) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        seen += inside.long()
    order = torch.argsort(seen, descending=True, stable=True)
    return cand[order[:num]].float()


def _mirrored(root: Path, metas: dict) -> bool:
    """Whether every listed camera rotation has determinant -1 (True) or +1 (False); mixed is an error."""
    signs: dict[bool, tuple[str, int, int]] = {}
    for split, (_, _, entries) in metas.items():
        for t, row in enumerate(entries):
            for c, e in enumerate(row):
                signs.setdefault(bool(np.linalg.det(e.w2c[:3, :3]) < 0), (f"{split}_meta.json", t, c))
    if len(signs) > 1:
        (fa, ta, ca), (fb, tb, cb) = signs[False], signs[True]
        raise DataError(root / fb, f"timestep {tb}, camera {cb}: w2c rotation has determinant -1 but {fa} timestep {ta}, "
                                   f"camera {ca} has +1 (a world frame must be mirrored for every camera or none)")
    return True in signs


def load(path: Path, config: DataConfig) -> Scene:
    """Read the Panoptic scene in folder ``path`` (see the module docstring for conventions)."""
    root = Path(path)
    downscale = DEFAULT_DOWNSCALE if config.downscale is None else float(config.downscale)
    config.check()

    metas = {split: _read_meta(root, f"{split}_meta.json") for split in ("train", "test")}
    num_listed = len(metas["train"][2])
    if len(metas["test"][2]) != num_listed:
        raise DataError(
            root / "test_meta.json",
            f"lists {len(metas['test'][2])} timesteps but train_meta.json lists {num_listed}",
        )

    # A timestep is present when every image listed for it (both splits) is on disk.
    def present(t: int) -> bool:
        return all(e.image.is_file() for split in metas.values() for e in split[2][t])

    present_frames = [t for t in range(num_listed) if present(t)]
    images_listed = sum(len(split[2][t]) for split in metas.values() for t in range(num_listed))
    if not present_frames:
        first = metas["train"][2][0][0].image
        raise DataError(root / "ims", f"none of the {num_listed} listed timesteps has all its images (e.g. {first})")
    if len(present_frames) < num_listed:
        warnings.warn(
            f"{root.name}: train_meta.json lists {num_listed} timesteps ({images_listed} images) but only "
            f"{len(present_frames)} are complete on disk; loading those {len(present_frames)}",
            MissingFramesWarning,
            stacklevel=2,
        )

    frames = present_frames[:: config.frame_step][: config.max_frames]
    f0, f1 = frames[0], frames[-1]
    mirrored = _mirrored(root, metas)
    if mirrored:
        warnings.warn(
            f"{root.name}: every camera rotation has determinant -1 (a mirrored world frame); "
            "loading the world reflected (x -> -x), which renders the same images",
            stacklevel=2,
        )
    to_world = np.diag([-1.0, 1.0, 1.0, 1.0]) if mirrored else np.eye(4)

    def view(e: _Entry, w: int, h: int) -> View:
        cam = Camera(
            world_to_camera=torch.from_numpy(e.w2c @ to_world).float(),
            fx=float(e.K[0, 0]), fy=float(e.K[1, 1]), cx=float(e.K[0, 2]), cy=float(e.K[1, 2]),
            width=w, height=h, near=NEAR_MIN, far=FAR,
            time=(e.frame - f0) / (f1 - f0) if f1 > f0 else 0.0,
            name=e.image.relative_to(root / "ims").with_suffix("").as_posix(),
        )
        if downscale != 1.0:
            cam = cam.scaled(1.0 / downscale)
        return View(camera=cam, source=ImageFile(e.image, (cam.width, cam.height)), camera_id=e.cam_id, frame=e.frame)

    all_views = {
        split: [view(e, w, h) for t in frames for e in entries[t]] for split, (w, h, entries) in metas.items()
    }
    all_views = _clip_near(all_views, config.near)
    if config.test_cameras is None:
        train_views, test_views = all_views["train"], all_views["test"]
    else:
        pooled = all_views["train"] + all_views["test"]
        known = {v.camera_id for v in pooled}
        unknown = sorted(set(config.test_cameras) - known)
        if unknown:
            raise ConfigError(f"test cameras {unknown} are not in {root.name} (cameras: {sorted(known)})")
        held = set(config.test_cameras)
        train_views = [v for v in pooled if v.camera_id not in held]
        test_views = [v for v in pooled if v.camera_id in held]
        if not train_views:
            raise ConfigError("test_cameras holds out every camera: nothing left to train on")

    pcd_path = root / "init_pt_cld.npz"

    def shipped():
        if not pcd_path.is_file():
            return None
        xyz, rgb = read_npz_points(pcd_path)
        return xyz, rgb, f"{pcd_path.name} ({len(xyz)} points)"

    def random():
        num = max(1, min(int(config.num_random_points), MAX_RANDOM_POINTS))
        pts = frustum_overlap_points([v.camera for v in first_views(train_views)], num, config.seed)
        return pts.double().numpy(), np.full((num, 3), 0.5), f"{num} random in the training cameras' frusta overlap"

    xyz, rgb, point_source = choose_points(config, train_views, shipped, random, MIRROR if mirrored else None)
    points = torch.from_numpy(np.asarray(xyz)).float().reshape(-1, 3)
    colors = torch.from_numpy(np.asarray(rgb)).float().reshape(-1, 3)

    info = {
        "timesteps_listed": num_listed,
        "timesteps_present": len(present_frames),
        "timesteps_loaded": len(frames),
        "images_listed": images_listed,
        "cameras": f"{len({v.camera_id for v in train_views})} train, {len({v.camera_id for v in test_views})} test",
        "time_normalisation": f"(frame - {f0}) / ({f1} - {f0}) over the loaded timesteps",
        "downscale": downscale,
        "initial_points": point_source,
        "world_frame": "mirrored in the files (det -1): reflected on load, x -> -x" if mirrored else "as in the files",
    }
    background = torch.ones(3) if config.white_background else torch.zeros(3)  # cpu: host-side scene data, moved by the trainers
    return Scene(
        name=root.resolve().name,
        format="panoptic",
        train_views=train_views,
        test_views=test_views,
        points=points,
        point_colors=colors,
        background=background,
        cache=FrameCache(config.cache_bytes),
        info=info,
    )
