"""Format ``"n3v"``: Neural 3D Video (DyNeRF, Li et al. 2022) multi-view videos.

Layout::

    scene/
      cam00.mp4 ... camNN.mp4   one synchronised video per camera
      poses_bounds.npy          [N, 17] float, one row per video in file-name order
      sparse/0/ or points3D.ply optional initial points (see below)

``poses_bounds.npy`` is LLFF's format: row ``i`` is a ``[3, 5]`` matrix
flattened row-major, then ``near, far``. The ``[3, 5]`` matrix is
``[c0 c1 c2 | C | (H, W, focal)]``: ``c0, c1, c2`` are the camera's *down*,
*right* and *back* axes expressed in world coordinates (the columns of a
camera-to-world rotation in LLFF's ``[down, right, back]`` convention), ``C``
its centre, ``H, W`` the image size and ``focal`` the focal length in pixels
at that size (principal point at the image centre).

Conversion to moegs/OpenCV (x right, y down, z forward): the OpenCV
camera-to-world rotation is ``[c1, c0, -c2]`` (right, down, forward =
-back), the centre is ``C``, and the world-to-camera matrix is
``[R^T | -R^T C]``. The world frame is kept as is (no recentring or rescaling).

Frames: ``DataConfig.frame_step`` and ``max_frames`` pick frames ``0, s, 2s,
...`` of the shortest video; kept frame ``k`` of ``K`` has time ``k / (K - 1)``
(0 when ``K = 1``) and ``View.frame = k``. Images are downscaled by 2 by default
(2704x2028 -> 1352x1014, the literature's setting) while decoding. Test views:
the cameras in ``DataConfig.test_cameras`` (default cam00), numbered by their
file names. Decoded frames come from a frame store (:mod:`moegs.data.framestore`:
each video decoded once, in order, into the user cache on first use) unless
``DataConfig.frame_store`` is ``"lazy"`` or every video is intra-only.

Initial points (``DataConfig.points``, see :mod:`moegs.data.points`): by default a
COLMAP model of the first frame when the folder has one (``sparse/0``, ``sparse``,
``colmap/sparse/0``), or ``points3D.ply``, else SfM on the first frame of the
training videos.
A COLMAP model is brought into the poses' frame by the similarity that maps its
camera centres onto the poses' centres (Umeyama), which is the identity when it
was made with the poses; ``info["points"]`` records the residual. Random points
(``points="random"``, or when SfM finds none) are ``num_random_points`` sampled
uniformly in volume inside the camera frusta between the near and far bounds.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..cameras import Camera
from ..errors import DataError
from .colmap import find_model_dir, read_model
from .config import DataConfig
from .points import PointCloud, choose_points
from .scene import FrameCache, Scene, View
from .framestore import FrameStore, store_dir, use_store
from .video import VideoReader, probe_video

__all__ = [
    "detect",
    "load",
    "llff_to_opencv",
    "opencv_to_llff",
    "umeyama",
    "read_ply_points",
    "write_ply_points",
    "poses_bounds",
    "random_frustum_points",
    "initial_points",
    "shipped_points",
    "DEFAULT_DOWNSCALE",
]

DEFAULT_DOWNSCALE = 2.0
_VIDEO = re.compile(r"^cam(\d+)\.mp4$")
_ALIGN_TOLERANCE = 0.05  # max COLMAP-to-poses centre residual, as a fraction of the rig's radius


def detect(path: Path) -> bool:
    """True for a folder with ``poses_bounds.npy`` and ``camXX.mp4`` videos."""
    return (path / "poses_bounds.npy").is_file() and any(_VIDEO.match(p.name) for p in path.glob("cam*.mp4"))


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera matrices of LLFF poses.

    Args:
        poses: ``[N, 3, 4]`` (or ``[N, 3, 5]``) LLFF camera-to-world ``[down, right, back | centre]``.

    Returns:
        ``[N, 4, 4]`` float64 world-to-camera matrices (x right, y down, z forward).
    """
    poses = np.asarray(poses, dtype=np.float64)
    R = np.stack((poses[:, :, 1], poses[:, :, 0], -poses[:, :, 2]), axis=-1)  # [N, 3, 3] c2w, OpenCV axes
    C = poses[:, :, 3]
    w2c = np.tile(np.eye(4), (len(poses), 1, 1))
    w2c[:, :3, :3] = R.transpose(0, 2, 1)
    w2c[:, :3, 3] = -np.einsum("nji,nj->ni", R, C)
    return w2c


def opencv_to_llff(world_to_camera: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_opencv`: ``[N, 4, 4]`` world-to-camera -> ``[N, 3, 4]`` LLFF poses."""
    c2w = np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64))
    return np.stack((c2w[:, :3, 1], c2w[:, :3, 0], -c2w[:, :3, 2], c2w[:, :3, 3]), axis=-1)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``(s, R, t)`` minimising ``sum |s R src_i + t - dst_i|^2`` (Umeyama 1991).

    Args:
        src, dst: ``[N, 3]`` corresponding points, ``N >= 3`` not collinear.

    Returns:
        scale, ``[3, 3]`` rotation, ``[3]`` translation.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    E = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[2, 2] = -1.0
    R = U @ E @ Vt
    s = float(np.trace(np.diag(D) @ E) / xs.var(0).sum())
    return s, R, md - s * R @ ms


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``[M, 3]`` positions and ``[M, 3]`` colours in ``[0, 1]`` (0.5 when absent) of a PLY point cloud."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], -1)
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise DataError(path, f"cannot read PLY vertices (x, y, z): {e}") from e
    names = v.data.dtype.names
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([np.asarray(v[k], np.float64) for k in ("red", "green", "blue")], -1) / 255.0
    else:
        rgb = np.full_like(xyz, 0.5)
    return xyz, rgb


def write_ply_points(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Write ``[M, 3]`` positions and ``[M, 3]`` colours in ``[0, 1]`` as a binary PLY (the inverse of
    :func:`read_ply_points`; float32 positions, uint8 colours)."""
    from plyfile import PlyData, PlyElement

    v = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, name in enumerate("xyz"):
        v[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        v[name] = np.round(np.clip(rgb[:, k], 0.0, 1.0) * 255.0).astype(np.uint8)
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


def poses_bounds(cameras: list[Camera]) -> np.ndarray:
    """``[N, 17]`` float64 rows of ``poses_bounds.npy`` for ``cameras`` (the inverse of what :func:`load`
    reads): ``[down, right, back, centre, (H, W, focal)]`` row-major, then ``near, far``.
    The cameras must have ``fx = fy`` and the principal point at the image centre (LLFF stores no more)."""
    poses = opencv_to_llff(np.stack([c.world_to_camera.double().numpy() for c in cameras]))  # [N, 3, 4]
    hwf = np.array([[c.height, c.width, c.fx] for c in cameras], np.float64)[:, :, None]
    rows = np.concatenate((poses, hwf), axis=2).reshape(len(cameras), 15)
    return np.concatenate((rows, [[c.near, c.far] for c in cameras]), axis=1)


def _read_poses_bounds(file: Path, n_videos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, 3, 4]`` LLFF poses, ``[N, 3]`` (H, W, focal), ``[N, 2]`` bounds, validated."""
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(file, f"cannot read as a .npy array: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise DataError(file, f"expected an [N, 17] array (LLFF poses and bounds), got shape {list(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        rows = sorted(set(np.argwhere(~np.isfinite(arr))[:, 0].tolist()))
        raise DataError(file, f"NaN or inf in rows {rows}")
    if len(arr) != n_videos:
        raise DataError(file, f"has {len(arr)} cameras but the folder has {n_videos} camXX.mp4 videos")
    m = arr[:, :15].reshape(-1, 3, 5)
    hwf, bounds = m[:, :, 4], arr[:, 15:17]
    R = m[:, :, :3]
    bad = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2)) > 1e-3
    if bad.any():
        raise DataError(file, f"camera rows {np.flatnonzero(bad).tolist()} do not hold rotation matrices")
    if (hwf <= 0).any() or (bounds[:, 0] <= 0).any() or (bounds[:, 1] <= bounds[:, 0]).any():
        raise DataError(file, "image size, focal length and 0 < near < far must be positive")
    return m[:, :, :4], hwf, bounds


def random_frustum_points(
    cams: list[Camera], n: int, seed: int, depth: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 3]`` points uniform in volume inside the cameras' frusta and ``[n, 3]`` random colours.

    Each point picks a camera uniformly, then a uniform pixel position and a depth
    in ``depth`` (default: the camera's ``near, far``) with density ``~ z^2``.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cams), n)
    pts = np.empty((n, 3))
    for i, cam in enumerate(cams):
        sel = np.flatnonzero(idx == i)
        u = rng.uniform(0, cam.width, len(sel))
        v = rng.uniform(0, cam.height, len(sel))
        near, far = (cam.near, cam.far) if depth is None else depth
        z = np.cbrt(near**3 + rng.uniform(0, 1, len(sel)) * (far**3 - near**3))
        p_cam = np.stack(((u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z), -1)
        c2w = cam.camera_to_world.double().numpy()
        pts[sel] = p_cam @ c2w[:3, :3].T + c2w[:3, 3]
    return pts, rng.uniform(0, 1, (n, 3))


def shipped_points(path: Path, cams: list[Camera]) -> PointCloud | None:
    """The folder's own points, or ``None``: a COLMAP model under ``path`` aligned to ``cams``
    by their centres (its images named like the cameras, ``camXX.png``), else ``points3D.ply``.

    A model whose centres do not match the cameras is skipped with a warning.
    """
    model_dir = find_model_dir(path)
    if model_dir is not None:
        model = read_model(model_dir)
        centres = {c.name: c.center.double().numpy() for c in cams}
        pairs = [(-im.rotation.T @ im.tvec, centres[Path(im.name).stem]) for im in model.images.values() if Path(im.name).stem in centres]
        rel = f"COLMAP model {model_dir.relative_to(path)}"
        if len(pairs) >= 3:
            src, dst = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            s, R, t = umeyama(src, dst)
            radius = max(float(np.linalg.norm(dst - dst.mean(0), axis=1).max()), 1e-9)
            residual = float(np.linalg.norm(s * src @ R.T + t - dst, axis=1).max()) / radius
            if residual <= _ALIGN_TOLERANCE:
                xyz = s * model.points.xyz @ R.T + t
                return xyz, model.points.rgb / 255.0, f"{rel}, aligned on {len(pairs)} cameras (residual {residual:.2%} of the rig radius)"
            warnings.warn(f"{model_dir}: camera centres do not match poses_bounds.npy (residual {residual:.1%}); not using its points")
        else:
            warnings.warn(f"{model_dir}: fewer than 3 of its images are named like the videos; not using its points")
    elif (path / "points3D.ply").is_file():
        xyz, rgb = read_ply_points(path / "points3D.ply")
        return xyz, rgb, "points3D.ply"
    return None


def initial_points(
    path: Path, cams: list[Camera], train_views: list[View], config: DataConfig, depth: tuple[float, float] | None = None
) -> PointCloud:
    """``[M, 3]`` initial points, ``[M, 3]`` colours in ``[0, 1]`` and a line saying where they came from,
    chosen by :func:`moegs.data.points.choose_points` among :func:`shipped_points`, SfM on the first frame
    of ``train_views`` and :func:`random_frustum_points` (``depth`` as there).
    """

    def random() -> PointCloud:
        xyz, rgb = random_frustum_points(cams, config.num_random_points, config.seed, depth)
        return xyz, rgb, f"{config.num_random_points} random points in the camera frusta (seed {config.seed})"

    return choose_points(config, train_views, lambda: shipped_points(path, cams), random)


def load(path: Path, config: DataConfig) -> Scene:
    """Read an N3V scene folder into a :class:`Scene` (see the module docstring)."""
    path = Path(path)
    videos = sorted((p for p in path.glob("cam*.mp4") if _VIDEO.match(p.name)), key=lambda p: int(_VIDEO.match(p.name)[1]))
    if not videos:
        raise DataError(path, "no camXX.mp4 videos")
    pb_file = path / "poses_bounds.npy"
    if not pb_file.is_file():
        raise DataError(pb_file, "missing: N3V needs the LLFF camera file poses_bounds.npy")
    poses, hwf, bounds = _read_poses_bounds(pb_file, len(videos))
    if config.frame_step < 1 or (config.max_frames is not None and config.max_frames < 1):
        raise DataError(None, f"frame_step and max_frames must be at least 1 (got {config.frame_step}, {config.max_frames})")
    factor = DEFAULT_DOWNSCALE if config.downscale is None else float(config.downscale)
    if factor <= 0:
        raise DataError(None, f"downscale must be positive, got {factor}")

    cache = FrameCache(config.cache_bytes)
    w2c = llff_to_opencv(poses)
    readers, cams = [], []
    for i, video in enumerate(videos):
        h, w, f = hwf[i]
        base = Camera(
            world_to_camera=torch.from_numpy(w2c[i]).float(),
            fx=float(f),
            fy=float(f),
            cx=float(w) / 2,
            cy=float(h) / 2,
            width=int(round(w)),
            height=int(round(h)),
            near=config.near_or(bounds[i, 0]),
            far=float(bounds[i, 1]),
            name=video.stem,
        )
        info = probe_video(video)
        vw, vh = info.width, info.height
        if (vw, vh) != (base.width, base.height):
            if abs(vw / base.width - vh / base.height) > 0.01:
                raise DataError(video, f"video is {vw}x{vh}, poses_bounds.npy says {base.width}x{base.height} (another aspect ratio)")
            base = base.scaled(vw / base.width)
        cam = base.scaled(1.0 / factor) if factor != 1.0 else base
        readers.append(VideoReader(video, cache, (cam.width, cam.height), info))
        cams.append(cam)

    counts = [r.num_frames for r in readers]
    n_frames = min(counts)
    kept = list(range(0, n_frames, config.frame_step))[: config.max_frames]
    K = len(kept)
    test_ids = set((0,) if config.test_cameras is None else config.test_cameras)
    store = FrameStore(readers, kept, store_dir(config.frame_store_dir)) if use_store(config.frame_store, readers) else None
    train, test = [], []
    for v, (video, reader, cam) in enumerate(zip(videos, readers, cams)):
        cam_id = int(_VIDEO.match(video.name)[1])
        for k, f in enumerate(kept):
            source = reader.source(f) if store is None else store.source(v, f)
            view = View(cam.with_time(k / (K - 1) if K > 1 else 0.0), source, camera_id=cam_id, frame=k)
            (test if cam_id in test_ids else train).append(view)
    if not train:
        raise DataError(path, f"no training cameras left after holding out {sorted(test_ids)}")

    xyz, rgb, points_from = initial_points(path, cams, train, config)
    return Scene(
        name=path.name,
        format="n3v",
        train_views=train,
        test_views=test,
        points=torch.from_numpy(np.asarray(xyz)).float().reshape(-1, 3),
        point_colors=torch.from_numpy(np.asarray(rgb)).float().reshape(-1, 3),
        background=torch.full((3,), 1.0 if config.white_background else 0.0),  # cpu: host-side scene data, moved by the trainers
        cache=cache,
        info={
            "cameras": len(videos),
            "frames_per_video": dict(zip((v.name for v in videos), counts)),
            "frames_used": K,
            "frame_indices": (kept[0], kept[-1], config.frame_step),
            "original_resolution": (readers[0].info.width, readers[0].info.height),
            "downscale": factor,
            "fps": readers[0].info.fps,
            "split": f"test cameras {sorted(test_ids)}",
            "frames_from": "lazy decoding" if store is None else f"frame store in {store.root}",
            "points": points_from,
        },
    )
