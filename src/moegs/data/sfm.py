"""Structure from motion on one frame of a multi-view capture, with pycolmap (CPU).

Two entry points, both on a list of images taken at the same instant:

- :func:`triangulate` -- the cameras are known (N3V, Technicolor, Panoptic,
  COLMAP without points): SIFT features, exhaustive matching with two-view
  geometric verification, then triangulation with the cameras held fixed
  (COLMAP's incremental triangulator on a reconstruction whose poses and
  intrinsics are the scene's), and filtering.
- :func:`reconstruct` -- the cameras are unknown (``moegs prepare``): the same
  features and matches, then COLMAP's incremental mapping (pinhole cameras with
  the principal point at the image centre, one focal length shared by all
  images or one per image).

Filtering keeps a point when its mean reprojection error is at most
``SfmOptions.max_reprojection_error`` pixels, it is seen by at least
``min_track_length`` cameras and, for known cameras, it lies between ``near``
and ``far`` of every camera that sees it.

:func:`frame_points` wraps :func:`triangulate` with a cache keyed by a
hash of the images, the cameras and the options, in ``$MOEGS_CACHE_DIR/sfm``
(default ``~/.cache/moegs/sfm``), so an instant of a scene is matched once. Every step shows a
progress bar with a time estimate on a terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..cameras import Camera
from ..errors import DataError
from ..io import cache_dir
from .config import SfmOptions

__all__ = ["SfmError", "SfmPoints", "Reconstruction", "triangulate", "reconstruct", "frame_points"]

_CACHE_VERSION = "sfm-v1"  # bump when what is cached changes


class SfmError(DataError):
    """SfM could not produce what was asked (too few matches, points or registered cameras)."""


@dataclass
class SfmPoints:
    """Triangulated points after filtering.

    Attributes:
        xyz: ``[M, 3]`` float64 world positions.
        rgb: ``[M, 3]`` float64 colours in ``[0, 1]``.
        error: ``[M]`` mean reprojection error in pixels.
        track_length: ``[M]`` number of images that see each point.
        stats: counts for logs (``triangulated``, ``kept``, ``matched_pairs``, ...).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_length: np.ndarray
    stats: dict


@dataclass
class Reconstruction:
    """What :func:`reconstruct` recovers.

    Attributes:
        cameras: one per input image, ``None`` for the images SfM did not register.
        points: the filtered points in the reconstruction's world frame.
    """

    cameras: list[Camera | None]
    points: SfmPoints


def _pycolmap():
    try:
        import pycolmap
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise SfmError(None, f"structure from motion needs pycolmap (pip install pycolmap): {e}") from e
    return pycolmap


@contextlib.contextmanager
def _quiet(pycolmap) -> Iterator[None]:
    """Silence COLMAP's INFO/WARNING log lines while SfM runs (errors still print)."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="img", disable=None if progress else True, dynamic_ncols=True)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 of a ``[H, W, 3|4]`` uint8 or float image (alpha dropped)."""
    a = np.asarray(image)[..., :3]
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _write_images(folder: Path, images: Sequence[np.ndarray], names: Sequence[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names):
        Image.fromarray(_as_uint8(img)).save(folder / name)


def _features_and_matches(pycolmap, work: Path, names: Sequence[str], options: SfmOptions, camera_mode, progress: bool,
                          cameras: Sequence[Camera] | None = None) -> None:
    """Import ``names`` (in ``work/images``) into ``work/database.db``, extract SIFT, match every pair:
    with :func:`_match_known_poses` when ``cameras`` are given, else with COLMAP's matcher and RANSAC."""
    db, images = work / "database.db", work / "images"
    pycolmap.Database.open(db).close()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    pycolmap.import_images(db, images, camera_mode=camera_mode, image_names=list(names), options=reader)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = options.max_image_size
    extraction.sift.max_num_features = options.max_features
    extraction.sift.peak_threshold = options.peak_threshold
    with _bar(len(names), "SfM features", progress) as bar:
        for name in names:
            pycolmap.extract_features(db, images, image_names=[name], camera_mode=camera_mode,
                                      reader_options=reader, extraction_options=extraction,
                                      device=pycolmap.Device.cpu)
            bar.update(1)
    if cameras is not None:
        _match_known_poses(pycolmap, db, names, cameras, options, progress)
        return
    pairs = work / "pairs.txt"
    with _bar(len(names) - 1, "SfM matching", progress) as bar:
        for i in range(len(names) - 1):  # image i against every later one: exhaustive, one row at a time
            pairs.write_text("".join(f"{names[i]} {names[j]}\n" for j in range(i + 1, len(names))))
            pycolmap.match_image_pairs(db, pairing_options=pycolmap.ImportedPairingOptions(match_list_path=pairs),
                                       device=pycolmap.Device.cpu)
            bar.update(1)


def _fundamental(a: Camera, b: Camera) -> Tensor:
    """``[3, 3]`` fundamental matrix with ``x_b^T F x_a = 0`` for pixels ``x_a`` of ``a`` and ``x_b`` of ``b``."""
    Ta, Tb = a.world_to_camera.double(), b.world_to_camera.double()
    rel = Tb @ torch.linalg.inv(Ta)  # camera a -> camera b
    R, t = rel[:3, :3], rel[:3, 3]
    tx = torch.tensor([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]], dtype=torch.float64)  # cpu: host-side scene data, moved by the trainers
    return torch.linalg.inv(b.K.double()).T @ tx @ R @ torch.linalg.inv(a.K.double())


def _epipolar_error(F: Tensor, xa: Tensor, xb: Tensor) -> Tensor:
    """``[M]`` larger of the two point-to-epipolar-line distances (pixels) of matches ``xa, xb`` ``[M, 2]``."""
    ha = torch.cat((xa, torch.ones_like(xa[:, :1])), 1)
    hb = torch.cat((xb, torch.ones_like(xb[:, :1])), 1)
    la, lb = ha @ F.T, hb @ F  # lines in b of the points of a, lines in a of the points of b
    num = (hb * la).sum(1).abs()
    return torch.maximum(num / la[:, :2].norm(dim=1).clamp_min(1e-12), num / lb[:, :2].norm(dim=1).clamp_min(1e-12))


def _mutual_matches(da: Tensor, db: Tensor, max_ratio: float) -> Tensor:
    """``[M, 2]`` index pairs of mutual nearest neighbours between descriptors ``da [Na, D]`` and ``db [Nb, D]``
    (unit rows) that pass Lowe's ratio test both ways."""
    if len(da) < 2 or len(db) < 2:
        return torch.zeros(0, 2, dtype=torch.int64)  # cpu: host-side scene data, moved by the trainers
    dist = (2.0 - 2.0 * da @ db.T).clamp_min(0.0).sqrt()  # [Na, Nb]
    va, ia = dist.topk(2, dim=1, largest=False)
    vb, ib = dist.topk(2, dim=0, largest=False)
    a = torch.arange(len(da))  # cpu: host-side scene data, moved by the trainers
    j = ia[:, 0]
    ok = (ib[0, j] == a) & (va[:, 0] < max_ratio * va[:, 1]) & (vb[0, j] < max_ratio * vb[1, j])
    return torch.stack((a[ok], j[ok]), 1)


def _match_known_poses(pycolmap, db_path: Path, names: Sequence[str], cameras: Sequence[Camera], options: SfmOptions,
                       progress: bool) -> None:
    """Match every image pair by mutual nearest SIFT neighbours (ratio test) and keep the matches that agree
    with the pair's known epipolar geometry (``options.max_epipolar_error``); written as verified two-view
    geometries, ready for triangulation."""
    with pycolmap.Database.open(db_path) as db:
        by_name = {im.name: im.image_id for im in db.read_all_images()}
        ids = [by_name[n] for n in names]
        xy = [torch.from_numpy(np.asarray(db.read_keypoints(i))[:, :2].astype(np.float64)) for i in ids]
        desc = []
        for i in ids:
            d = torch.from_numpy(np.asarray(db.read_descriptors(i).data, np.float32))
            desc.append(d / d.norm(dim=1, keepdim=True).clamp_min(1e-12))
        with _bar(len(names) - 1, "SfM matching", progress) as bar:
            for a in range(len(names) - 1):
                for b in range(a + 1, len(names)):
                    m = _mutual_matches(desc[a], desc[b], options.max_ratio)
                    if len(m):
                        err = _epipolar_error(_fundamental(cameras[a], cameras[b]), xy[a][m[:, 0]], xy[b][m[:, 1]])
                        m = m[err <= options.max_epipolar_error]
                    if len(m) < 2:
                        continue
                    ia, ib, mm = ids[a], ids[b], m.numpy().astype(np.uint32)
                    if ia > ib:
                        ia, ib, mm = ib, ia, mm[:, ::-1].copy()
                    geometry = pycolmap.TwoViewGeometry()
                    geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                    geometry.inlier_matches = mm
                    db.write_matches(ia, ib, mm)
                    db.write_two_view_geometry(ia, ib, geometry)
                bar.update(1)


def _filtered(rec, options: SfmOptions, cameras_by_image: dict[int, Camera] | None, stats: dict) -> SfmPoints:
    """The points of pycolmap reconstruction ``rec`` that pass the filters (module docstring)."""
    rec.update_point_3d_errors()
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], np.float64).reshape(-1, 3) / 255.0
    err = np.array([p.error for p in pts], np.float64)
    tracks = [sorted({el.image_id for el in p.track.elements}) for p in pts]
    length = np.array([len(t) for t in tracks], np.int64)
    in_range = np.isfinite(xyz).all(1)
    if cameras_by_image is not None:
        for i, track in enumerate(tracks):
            for image_id in track:
                cam = cameras_by_image[image_id]
                w2c = cam.world_to_camera.double().numpy()
                z = float(w2c[2, :3] @ xyz[i] + w2c[2, 3])
                if not cam.near < z < cam.far:
                    in_range[i] = False
                    break
    raw = SfmPoints(xyz[in_range], rgb[in_range], err[in_range], length[in_range], {**stats, "triangulated": len(xyz)})
    return _filtered_arrays(raw, options)


def _filtered_arrays(points: SfmPoints, options: SfmOptions) -> SfmPoints:
    """The points with mean reprojection error <= ``options.max_reprojection_error`` pixels and at least
    ``options.min_track_length`` observing images."""
    keep = (points.error <= options.max_reprojection_error) & (points.track_length >= options.min_track_length)
    return SfmPoints(points.xyz[keep], points.rgb[keep], points.error[keep], points.track_length[keep],
                     {**points.stats, "kept": int(keep.sum())})


def _names(n: int) -> list[str]:
    return [f"{i:04d}.png" for i in range(n)]


def _check_inputs(images: Sequence[np.ndarray], minimum: int = 2) -> None:
    if len(images) < minimum:
        raise SfmError(None, f"structure from motion needs at least {minimum} images, got {len(images)}")


def triangulate(images: Sequence[np.ndarray], cameras: Sequence[Camera], options: SfmOptions | None = None,
                progress: bool = True) -> SfmPoints:
    """Points seen by images of known cameras, all taken at the same instant.

    Args:
        images: ``V`` images, each ``[H_i, W_i, 3]`` (or ``[H_i, W_i, 4]``, alpha dropped), uint8 or float in ``[0, 1]``.
        cameras: the ``V`` cameras (at the images' resolution); held fixed.
        options: features, matching and filtering settings.
        progress: show progress bars (on a terminal).

    Returns:
        The filtered points, coloured by the images.

    Raises:
        SfmError: fewer than 2 images, or no point survives.
    """
    pycolmap = _pycolmap()
    options = options or SfmOptions()
    _check_inputs(images)
    if len(images) != len(cameras):
        raise ValueError(f"{len(images)} images but {len(cameras)} cameras")
    for img, cam in zip(images, cameras):
        if tuple(np.shape(img)[:2]) != (cam.height, cam.width):
            raise ValueError(f"camera {cam.name!r} is {cam.width}x{cam.height}, its image {np.shape(img)[1]}x{np.shape(img)[0]}")
    names = _names(len(images))
    with tempfile.TemporaryDirectory(prefix="moegs-sfm-") as tmp, _quiet(pycolmap):
        work = Path(tmp)
        _write_images(work / "images", images, names)
        pycolmap.set_random_seed(0)
        _features_and_matches(pycolmap, work, names, options, pycolmap.CameraMode.PER_IMAGE, progress, cameras)
        with pycolmap.Database.open(work / "database.db") as db:
            by_name = {im.name: im for im in db.read_all_images()}
            rec = pycolmap.Reconstruction()
            cams_by_id = {}
            for cam, name in zip(cameras, names):
                im = by_name[name]
                colmap_cam = db.read_camera(im.camera_id)
                colmap_cam.model = pycolmap.CameraModelId.PINHOLE
                colmap_cam.width, colmap_cam.height = cam.width, cam.height
                colmap_cam.params = [cam.fx, cam.fy, cam.cx, cam.cy]
                colmap_cam.has_prior_focal_length = True
                db.update_camera(colmap_cam)
                rec.add_camera_with_trivial_rig(colmap_cam)
                w2c = cam.world_to_camera.double().numpy()
                rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=im.camera_id, image_id=im.image_id),
                                                 pycolmap.Rigid3d(w2c[:3]))
                cams_by_id[im.image_id] = cam
            stats = {"images": len(names), "matched_pairs": db.num_verified_image_pairs(),
                     "inlier_matches": db.num_inlier_matches()}
            cache = pycolmap.DatabaseCache.create(db, pycolmap.DatabaseCacheOptions())
        mapper = pycolmap.IncrementalMapper(cache)
        mapper.begin_reconstruction(rec)
        tri = pycolmap.IncrementalTriangulatorOptions()
        tri.min_angle = options.min_triangulation_angle
        tri.ignore_two_view_tracks = options.min_track_length > 2
        tri.random_seed = 0
        with _bar(len(names), "SfM triangulation", progress) as bar:
            for name in names:
                mapper.triangulate_image(tri, by_name[name].image_id)
                bar.update(1)
        mapper.retriangulate(tri)
        mapper.complete_and_merge_tracks(tri)
        mapper.end_reconstruction(False)
        rec.extract_colors_for_all_images(str(work / "images"))
        points = _filtered(rec, options, cams_by_id, stats)
    if len(points.xyz) == 0:
        raise SfmError(None, f"SfM kept no point ({stats['matched_pairs']} image pairs matched, "
                             f"{points.stats['triangulated']} points triangulated before filtering)")
    return points


def reconstruct(images: Sequence[np.ndarray], options: SfmOptions | None = None, progress: bool = True) -> Reconstruction:
    """Cameras and points of images with unknown cameras taken at the same instant (incremental SfM).

    Args:
        images: ``V >= 2`` images ``[H, W, 3]`` uint8 or float in ``[0, 1]``, all of one size when
            ``options.shared_intrinsics``.
        options: settings; ``shared_intrinsics`` picks one focal length for all images or one each.
        progress: show progress bars (on a terminal).

    Returns:
        The cameras (``None`` where not registered; pinhole, ``fx = fy``, principal point at the
        image centre, ``near``/``far`` from the depths of the points they see) of the largest
        model, and its filtered points.

    Raises:
        SfmError: no model could be started (too few matches).
    """
    pycolmap = _pycolmap()
    options = options or SfmOptions()
    _check_inputs(images)
    names = _names(len(images))
    mode = pycolmap.CameraMode.SINGLE if options.shared_intrinsics else pycolmap.CameraMode.PER_IMAGE
    with tempfile.TemporaryDirectory(prefix="moegs-sfm-") as tmp, _quiet(pycolmap):
        work = Path(tmp)
        _write_images(work / "images", images, names)
        pycolmap.set_random_seed(0)
        _features_and_matches(pycolmap, work, names, options, mode, progress)
        with pycolmap.Database.open(work / "database.db") as db:
            stats = {"images": len(names), "matched_pairs": db.num_verified_image_pairs(),
                     "inlier_matches": db.num_inlier_matches()}
        pipeline = pycolmap.IncrementalPipelineOptions()
        pipeline.random_seed = 0
        pipeline.multiple_models = False
        pipeline.triangulation.min_angle = options.min_triangulation_angle
        pipeline.mapper.filter_max_reproj_error = max(options.max_reprojection_error, 1.0) * 2.0
        with _bar(len(names), "SfM mapping", progress) as bar:
            models = pycolmap.incremental_mapping(
                work / "database.db", work / "images", work / "sparse", pipeline,
                initial_image_pair_callback=lambda: bar.update(2),
                next_image_callback=lambda: bar.update(1),
            )
        if not models:
            raise SfmError(None, f"SfM could not start a model from any image pair ({stats['matched_pairs']} pairs "
                                 f"matched, {stats['inlier_matches']} inlier matches)")
        rec = max(models.values(), key=lambda r: r.num_reg_images())
        by_name = {im.name: im for im in rec.images.values() if im.has_pose}
        cameras: list[Camera | None] = []
        for i, name in enumerate(names):
            im = by_name.get(name)
            if im is None:
                cameras.append(None)
                continue
            cc = rec.cameras[im.camera_id]
            w2c = np.eye(4)
            w2c[:3] = im.cam_from_world().matrix()
            f = float(cc.mean_focal_length())
            cameras.append(Camera(torch.from_numpy(w2c).float(), f, f, float(cc.principal_point_x), float(cc.principal_point_y),
                                  int(cc.width), int(cc.height), name=name))
        points = _filtered(rec, options, None, stats)
    return Reconstruction(_with_depth_bounds(cameras, points.xyz), points)


def _with_depth_bounds(cameras: list[Camera | None], xyz: np.ndarray) -> list[Camera | None]:
    """``near``/``far`` of each camera from the 0.1 / 99.9 percentile depths of the points in front of it
    (LLFF's ``imgs2poses`` rule), with a 10 % / 20 % margin."""
    out = []
    for cam in cameras:
        if cam is None or len(xyz) == 0:
            out.append(cam)
            continue
        w2c = cam.world_to_camera.double().numpy()
        z = xyz @ w2c[2, :3] + w2c[2, 3]
        z = z[z > 0]
        if len(z) == 0:
            out.append(cam)
            continue
        near, far = 0.9 * float(np.percentile(z, 0.1)), 1.2 * float(np.percentile(z, 99.9))
        out.append(dataclasses.replace(cam, near=max(near, 1e-3), far=max(far, 2 * near)))
    return out


def _cache_key(images: Sequence[np.ndarray], cameras: Sequence[Camera], options: SfmOptions) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    # one instant's result does not depend on how many instants are merged
    h.update(repr(sorted(dataclasses.asdict(dataclasses.replace(options, frames=1)).items())).encode())
    for img, cam in zip(images, cameras):
        h.update(cam.world_to_camera.double().numpy().tobytes())
        h.update(np.array([cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, cam.near, cam.far], np.float64).tobytes())
        a = _as_uint8(img)
        h.update(np.array(a.shape, np.int64).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def frame_points(images: Sequence[np.ndarray], cameras: Sequence[Camera], options: SfmOptions | None = None,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`triangulate`, cached in the user cache by a hash of ``images``, ``cameras`` and ``options``.

    A failure (no point kept) is cached too, and raised again on the next call.

    Returns:
        ``[M, 3]`` points, ``[M, 3]`` colours in ``[0, 1]``, and a line saying where they came from
        (including the cache file).

    Raises:
        SfmError: as :func:`triangulate`.
    """
    from .. import io

    options = options or SfmOptions()
    file = cache_dir() / "sfm" / f"{_cache_key(images, cameras, options)}.pt"
    entry = None
    if file.is_file():
        try:
            entry = torch.load(file, weights_only=True)
        except Exception as e:  # a damaged cache entry is recomputed, never fatal
            warnings.warn(f"{file}: unreadable SfM cache entry ({e}); recomputing", stacklevel=2)
    if entry is None:
        try:
            pts = triangulate(images, cameras, options, progress)
            entry = {"xyz": torch.from_numpy(pts.xyz), "rgb": torch.from_numpy(pts.rgb), "stats": pts.stats}
        except SfmError as e:
            entry = {"error": e.problem}
        io.torch_save(entry, file)
        cached = False
    else:
        cached = True
    if "error" in entry:
        raise SfmError(None, entry["error"] + (f" (cached in {file})" if cached else ""))
    return entry["xyz"].numpy(), entry["rgb"].numpy(), _describe(entry["stats"], file, cached)


def _describe(stats: dict, file: Path, cached: bool) -> str:
    return (f"SfM on {stats['images']} cameras at one instant: {stats['kept']} points "
            f"(of {stats['triangulated']} triangulated, {stats['matched_pairs']} image pairs matched); "
            f"{'read from' if cached else 'saved to'} {file}")
