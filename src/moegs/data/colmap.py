"""Readers and writers for COLMAP sparse models, binary (``*.bin``) and text (``*.txt``).

A model is three files: ``cameras`` (intrinsics), ``images`` (one pose per
image plus its 2D keypoints) and ``points3D`` (the triangulated points with
colours and tracks). The layouts follow COLMAP's ``src/colmap/scene/reconstruction_io``
(and its ``scripts/python/read_write_model.py``): little-endian, ``uint64``
counts, ``double`` values.

COLMAP's image pose ``(qvec, tvec)`` maps world points into the camera frame,
``x_cam = R(qvec) @ x_world + tvec``, with camera axes x right, y down, z
forward and the centre of the top-left pixel at ``(0.5, 0.5)`` -- exactly
moegs's :class:`~moegs.cameras.Camera` convention, so :func:`to_camera` copies
it without any axis change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Camera
from ..errors import DataError

__all__ = [
    "CAMERA_MODELS",
    "ColmapCamera",
    "ColmapImage",
    "ColmapPoints",
    "ColmapModel",
    "find_model_dir",
    "read_model",
    "read_cameras_binary",
    "read_cameras_text",
    "read_images_binary",
    "read_images_text",
    "read_points3D_binary",
    "read_points3D_text",
    "write_model",
    "qvec_to_rotmat",
    "rotmat_to_qvec",
    "to_camera",
]

# COLMAP model id -> (name, number of parameters)
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}

# Perspective models that :func:`to_camera` supports: name -> (focal params, distortion names).
# Parameters are laid out as [focal(s), cx, cy, distortion...].
_PERSPECTIVE: dict[str, tuple[int, tuple[str, ...]]] = {
    "SIMPLE_PINHOLE": (1, ()),
    "PINHOLE": (2, ()),
    "SIMPLE_RADIAL": (1, ("k1",)),
    "RADIAL": (1, ("k1", "k2")),
    "OPENCV": (2, ("k1", "k2", "p1", "p2")),
    "FULL_OPENCV": (2, ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
}


@dataclass
class ColmapCamera:
    """One COLMAP camera (intrinsics shared by the images that reference it).

    Attributes:
        id: COLMAP camera id.
        model: model name, e.g. ``"PINHOLE"`` (see :data:`CAMERA_MODELS`).
        width, height: image size in pixels.
        params: ``[P]`` float64 parameters in COLMAP's order for ``model``.
    """

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    """One registered image.

    Attributes:
        id: COLMAP image id.
        qvec: ``[4]`` world-to-camera rotation quaternion ``(w, x, y, z)``.
        tvec: ``[3]`` world-to-camera translation.
        camera_id: id of its :class:`ColmapCamera`.
        name: image file name relative to the images folder.
        xys: ``[P, 2]`` float64 keypoint positions in pixels.
        point3D_ids: ``[P]`` int64 id of the 3D point each keypoint observes (-1: none).
    """

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray
    point3D_ids: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        """``[3, 3]`` world-to-camera rotation."""
        return qvec_to_rotmat(self.qvec)

    @property
    def world_to_camera(self) -> np.ndarray:
        """``[4, 4]`` float64 world-to-camera matrix (OpenCV axes)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapPoints:
    """All 3D points of a model, as arrays (``M`` points).

    Attributes:
        ids: ``[M]`` int64 COLMAP point ids.
        xyz: ``[M, 3]`` float64 world positions.
        rgb: ``[M, 3]`` uint8 colours.
        error: ``[M]`` float64 mean reprojection error in pixels.
        tracks: ``M`` arrays ``[L, 2]`` int64 of ``(image_id, point2D_index)``.
    """

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    tracks: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ColmapModel:
    """A whole sparse model: cameras and images keyed by id, and the points."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints


# ------------------------------------------------------------------ rotations
def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation of the unit quaternion ``qvec = (w, x, y, z)`` (normalised first)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """``[4]`` unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of the ``[3, 3]`` rotation ``R``."""
    R = np.asarray(R, dtype=np.float64)
    # The eigenvector of the symmetric matrix K with the largest eigenvalue (Bar-Itzhack).
    Rxx, Ryx, Rzx, Rxy, Ryy, Rzy, Rxz, Ryz, Rzz = R.flat
    K = (
        np.array(
            [
                [Rxx - Ryy - Rzz, 0, 0, 0],
                [Ryx + Rxy, Ryy - Rxx - Rzz, 0, 0],
                [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, 0],
                [Ryz - Rzy, Rzx - Rxz, Rxy - Ryx, Rxx + Ryy + Rzz],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


# ------------------------------------------------------------- binary readers
class _Reader:
    """Bounds-checked little-endian reader over a file's bytes; errors name the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as e:
            raise DataError(path, f"cannot read: {e.strerror or e}") from e
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.buf):
            raise DataError(self.path, f"truncated: file ends inside {what} (byte {len(self.buf)} of at least {self.pos + n})")
        out = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.take(dt.itemsize * count, what), dtype=dt).copy()

    def cstring(self, what: str) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise DataError(self.path, f"truncated: file ends inside {what}")
        s = self.buf[self.pos : end]
        self.pos = end + 1
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(self.path, f"{what} is not valid UTF-8") from e

    def count(self, what: str, min_record: int) -> int:
        (n,) = self.unpack("Q", f"the number of {what}")
        if n * min_record > len(self.buf) - self.pos:
            raise DataError(self.path, f"corrupt or truncated: header claims {n} {what}, the file is too short for that")
        return n

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise DataError(self.path, f"corrupt: {len(self.buf) - self.pos} unexpected trailing bytes")


def read_cameras_binary(path: str | Path) -> dict[int, ColmapCamera]:
    """Read COLMAP ``cameras.bin``."""
    r = _Reader(Path(path))
    cams = {}
    for i in range(r.count("cameras", 24)):
        cam_id, model_id, w, h = r.unpack("iiQQ", f"camera {i}")
        if model_id not in CAMERA_MODELS:
            raise DataError(r.path, f"corrupt: camera {cam_id} has unknown model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        cams[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), r.array("f8", n, f"camera {cam_id} parameters"))
    r.finish()
    return cams


def read_images_binary(path: str | Path) -> dict[int, ColmapImage]:
    """Read COLMAP ``images.bin``."""
    r = _Reader(Path(path))
    images = {}
    for i in range(r.count("images", 64)):
        vals = r.unpack("i7di", f"image {i}")
        img_id, qvec, tvec, cam_id = vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8]
        name = r.cstring(f"the name of image {img_id}")
        (n2d,) = r.unpack("Q", f"the keypoint count of image {name!r}")
        rec = r.array("f8,f8,i8", int(n2d), f"the keypoints of image {name!r}")
        xys = np.stack((rec["f0"], rec["f1"]), axis=-1)
        images[img_id] = ColmapImage(img_id, qvec, tvec, cam_id, name, xys, rec["f2"].astype(np.int64))
    r.finish()
    return images


def read_points3D_binary(path: str | Path) -> ColmapPoints:
    """Read COLMAP ``points3D.bin``."""
    r = _Reader(Path(path))
    n = r.count("points", 51)
    ids, xyz, rgb, err, tracks = np.empty(n, np.int64), np.empty((n, 3)), np.empty((n, 3), np.uint8), np.empty(n), []
    for i in range(n):
        vals = r.unpack("Q3d3Bd", f"point {i}")
        ids[i], xyz[i], rgb[i], err[i] = vals[0], vals[1:4], vals[4:7], vals[7]
        (tl,) = r.unpack("Q", f"the track length of point {vals[0]}")
        tracks.append(r.array("i4", 2 * int(tl), f"the track of point {vals[0]}").astype(np.int64).reshape(-1, 2))
    r.finish()
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# --------------------------------------------------------------- text readers
def _text_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-comment, non-empty lines of a COLMAP text file as ``(line number, fields)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read as text: {e}") from e
    return [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]


def _parse(path: Path, lineno: int, fn, what: str):
    try:
        return fn()
    except (ValueError, IndexError) as e:
        raise DataError(path, f"line {lineno}: malformed {what} ({e})") from e


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    """Read COLMAP ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line)."""
    path = Path(path)
    cams = {}
    for ln, f in _text_rows(path):
        if len(f) < 4 or f[1] not in _MODEL_IDS:
            raise DataError(path, f"line {ln}: malformed camera (unknown model {f[1]!r})" if len(f) >= 4 else f"line {ln}: malformed camera")
        n = _MODEL_IDS[f[1]][1]
        if len(f) != 4 + n:
            raise DataError(path, f"line {ln}: camera model {f[1]} takes {n} parameters, found {len(f) - 4}")
        cam = _parse(path, ln, lambda: ColmapCamera(int(f[0]), f[1], int(f[2]), int(f[3]), np.array(f[4:], dtype=np.float64)), "camera")
        cams[cam.id] = cam
    return cams


def read_images_text(path: str | Path) -> dict[int, ColmapImage]:
    """Read COLMAP ``images.txt`` (two lines per image: pose and name, then ``X Y POINT3D_ID`` triples)."""
    path = Path(path)
    # Keypoint lines may be empty, so pair raw lines rather than non-empty ones.
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read as text: {e}") from e
    lines = [(i + 1, ln) for i, ln in enumerate(lines) if not ln.lstrip().startswith("#")]
    while lines and not lines[-1][1].strip():
        lines.pop()
    images = {}
    for k in range(0, len(lines), 2):
        ln, head = lines[k][0], lines[k][1].split()
        if k + 1 >= len(lines):
            raise DataError(path, f"line {ln}: truncated: image without its keypoint line")
        pts = lines[k + 1][1].split()
        if len(head) < 10 or len(pts) % 3:
            raise DataError(path, f"line {ln}: malformed image record")

        def build() -> ColmapImage:
            arr = np.array(pts, dtype=np.float64).reshape(-1, 3)
            return ColmapImage(
                int(head[0]),
                np.array(head[1:5], dtype=np.float64),
                np.array(head[5:8], dtype=np.float64),
                int(head[8]),
                " ".join(head[9:]),
                arr[:, :2].copy(),
                arr[:, 2].astype(np.int64),
            )

        img = _parse(path, ln, build, "image")
        images[img.id] = img
    return images


def read_points3D_text(path: str | Path) -> ColmapPoints:
    """Read COLMAP ``points3D.txt`` (``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line)."""
    path = Path(path)
    rows = _text_rows(path)
    n = len(rows)
    ids, xyz, rgb, err, tracks = np.empty(n, np.int64), np.empty((n, 3)), np.empty((n, 3), np.uint8), np.empty(n), []
    for i, (ln, f) in enumerate(rows):
        if len(f) < 8 or (len(f) - 8) % 2:
            raise DataError(path, f"line {ln}: malformed point")

        def fill() -> None:
            ids[i], xyz[i], rgb[i], err[i] = int(f[0]), [float(v) for v in f[1:4]], [int(v) for v in f[4:7]], float(f[7])
            tracks.append(np.array(f[8:], dtype=np.int64).reshape(-1, 2))

        _parse(path, ln, fill, "point")
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# ------------------------------------------------------------------ the model
def find_model_dir(root: str | Path) -> Path | None:
    """The folder holding a COLMAP model under ``root``: ``root`` itself, ``sparse/0``,
    ``sparse``, ``colmap/sparse/0`` or ``colmap/sparse``; ``None`` if there is none."""
    root = Path(root)
    for sub in ("", "sparse/0", "sparse", "colmap/sparse/0", "colmap/sparse"):
        d = root / sub if sub else root
        if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return d
    return None


def read_model(path: str | Path) -> ColmapModel:
    """Read the model in folder ``path``: binary files if present, else text."""
    path = Path(path)
    for ext, readers in (
        (".bin", (read_cameras_binary, read_images_binary, read_points3D_binary)),
        (".txt", (read_cameras_text, read_images_text, read_points3D_text)),
    ):
        files = [path / f"{n}{ext}" for n in ("cameras", "images", "points3D")]
        if files[0].is_file():
            for f in files[1:]:
                if not f.is_file():
                    raise DataError(f, "missing: a COLMAP model needs cameras, images and points3D files")
            model = ColmapModel(*(rd(f) for rd, f in zip(readers, files)))
            for img in model.images.values():
                if img.camera_id not in model.cameras:
                    raise DataError(files[1], f"image {img.name!r} references camera {img.camera_id}, which {files[0].name} lacks")
            return model
    raise DataError(path, "no COLMAP model here (expected cameras.bin/.txt, images.bin/.txt, points3D.bin/.txt)")


def write_model(model: ColmapModel, path: str | Path, binary: bool = True) -> None:
    """Write ``model`` into folder ``path`` as COLMAP binary (``.bin``) or text (``.txt``) files."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cams, imgs, pts = model.cameras.values(), model.images.values(), model.points
    if binary:
        out = [struct.pack("<Q", len(cams))]
        for c in cams:
            out += [struct.pack("<iiQQ", c.id, _MODEL_IDS[c.model][0], c.width, c.height), np.asarray(c.params, "<f8").tobytes()]
        (path / "cameras.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(imgs))]
        for im in imgs:
            rec = np.empty(len(im.xys), dtype=np.dtype("<f8,<f8,<i8"))
            rec["f0"], rec["f1"], rec["f2"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
            out += [
                struct.pack("<i7di", im.id, *im.qvec, *im.tvec, im.camera_id),
                im.name.encode("utf-8") + b"\0",
                struct.pack("<Q", len(rec)),
                rec.tobytes(),
            ]
        (path / "images.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(pts))]
        for i in range(len(pts)):
            out += [
                struct.pack("<Q3d3Bd", pts.ids[i], *pts.xyz[i], *pts.rgb[i], pts.error[i]),
                struct.pack("<Q", len(pts.tracks[i])),
                np.asarray(pts.tracks[i], "<i4").tobytes(),
            ]
        (path / "points3D.bin").write_bytes(b"".join(out))
        return
    lines = ["# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height), *map(repr, map(float, c.params))]) for c in cams]
    (path / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "# POINTS2D[] as (X, Y, POINT3D_ID)"]
    for im in imgs:
        lines.append(" ".join([str(im.id), *map(repr, map(float, im.qvec)), *map(repr, map(float, im.tvec)), str(im.camera_id), im.name]))
        lines.append(" ".join(f"{float(x)!r} {float(y)!r} {int(p)}" for (x, y), p in zip(im.xys, im.point3D_ids)))
    (path / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for i in range(len(pts)):
        lines.append(
            " ".join([str(pts.ids[i]), *map(repr, map(float, pts.xyz[i])), *map(str, pts.rgb[i]), repr(float(pts.error[i]))] + [str(int(v)) for v in np.ravel(pts.tracks[i])])
        )
    (path / "points3D.txt").write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------- to moegs camera
def to_camera(image: ColmapImage, camera: ColmapCamera, **kwargs) -> Camera:
    """The moegs :class:`Camera` of a COLMAP image (float32, no axis change).

    Distortion coefficients are not applied (moegs cameras are pinhole); they are
    kept in ``Camera.metadata["distortion"]`` as ``{name: value}`` together with
    ``metadata["colmap_model"]``. ``kwargs`` (``near``, ``far``, ``time``, ``name``)
    go to the Camera; ``name`` defaults to the image's file name.

    Raises:
        DataError: for models that are not perspective with polynomial distortion
            (fisheye, FOV, thin prism), naming the model.
    """
    if camera.model not in _PERSPECTIVE:
        raise DataError(
            None,
            f"camera {camera.id} of image {image.name!r} uses COLMAP model {camera.model}, which moegs does not support "
            f"(supported: {', '.join(_PERSPECTIVE)}); undistort the images first (colmap image_undistorter)",
        )
    nf, dist_names = _PERSPECTIVE[camera.model]
    p = [float(v) for v in camera.params]
    fx, fy = (p[0], p[0]) if nf == 1 else (p[0], p[1])
    cx, cy = p[nf], p[nf + 1]
    distortion = dict(zip(dist_names, p[nf + 2 :]))
    kwargs.setdefault("name", image.name)
    return Camera(
        world_to_camera=torch.from_numpy(image.world_to_camera).float(),
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        width=camera.width,
        height=camera.height,
        metadata={"colmap_model": camera.model, "distortion": distortion},
        **kwargs,
    )
