"""Format ``"colmap"``: a static scene as a COLMAP reconstruction.

Layout (as produced by ``colmap image_undistorter`` and read by 3D Gaussian
Splatting)::

    scene/
      images/            the images named in the model
      sparse/0/          cameras, images, points3D (.bin or .txt); ``sparse/`` also accepted

Every view is at time 0. Split: images sorted by name, every 8th one (index
``i % 8 == 0``) is a test view -- 3DGS's ``llffhold = 8`` -- unless
``DataConfig.test_cameras`` names image indices. With fewer than 8 images all
views are used for both training and testing (``info["split"]`` says so).
Initial points (``DataConfig.points``, see :mod:`moegs.data.points`): by default
the model's points3D with their colours, or SfM on the training images when the
model has none (a model of poses only).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import DataError, MissingFramesWarning
from .colmap import ColmapModel, find_model_dir, read_model, to_camera
from .config import DataConfig
from .images import ImageFile, read_image_size
from .points import choose_points
from .scene import FrameCache, Scene, View

__all__ = ["detect", "load", "LLFF_HOLD"]

LLFF_HOLD = 8  # every 8th image is a test view (3DGS convention)


def _model_dir(path: Path) -> Path | None:
    for sub in ("sparse/0", "sparse"):
        d = path / sub
        if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return d
    return None


def detect(path: Path) -> bool:
    """True for a folder with ``images/`` and a COLMAP model in ``sparse/0`` or ``sparse``."""
    return (path / "images").is_dir() and _model_dir(path) is not None


def model_points(model: ColmapModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``[M, 3]`` float32 positions and ``[M, 3]`` colours in ``[0, 1]`` of the model's points3D."""
    pts = model.points
    return torch.from_numpy(pts.xyz).float().reshape(-1, 3), torch.from_numpy(pts.rgb).float().reshape(-1, 3) / 255.0


def load(path: Path, config: DataConfig) -> Scene:
    """Read a static COLMAP scene folder into a :class:`Scene` (see the module docstring)."""
    path = Path(path)
    model_dir = _model_dir(path) or find_model_dir(path)
    if model_dir is None:
        raise DataError(path, "no COLMAP model (expected sparse/0/ or sparse/ with cameras, images, points3D)")
    image_dir = path / "images"
    if not image_dir.is_dir():
        raise DataError(image_dir, "missing: the folder of the images named in the COLMAP model")
    model = read_model(model_dir)
    if not model.images:
        raise DataError(model_dir, "the COLMAP model has no registered images")
    images = sorted(model.images.values(), key=lambda im: im.name)
    missing = [im.name for im in images if not (image_dir / im.name).is_file()]
    if len(missing) == len(images):
        raise DataError(
            image_dir,
            f"none of the {len(images)} images listed in {model_dir.name}/images is on disk "
            f"(first: {missing[0]}); the model and the image folder do not match",
        )
    if missing:  # a subset of the reconstruction's images is common: use those present
        warnings.warn(
            f"{image_dir}: {len(missing)} of the {len(images)} images listed in the COLMAP model are missing on "
            f"disk (first: {missing[0]}); loading the {len(images) - len(missing)} present",
            MissingFramesWarning,
            stacklevel=2,
        )
        images = [im for im in images if im.name not in set(missing)]
    factor = 1.0 if config.downscale is None else float(config.downscale)
    if factor <= 0:
        raise DataError(None, f"downscale must be positive, got {factor}")

    views = []
    for i, im in enumerate(images):
        cam_model = model.cameras[im.camera_id]
        file = image_dir / im.name
        size = read_image_size(file)
        try:
            cam = to_camera(im, cam_model, name=Path(im.name).stem, near=config.near_or(0.01))
        except DataError as e:
            cameras_file = next(f for f in (model_dir / "cameras.bin", model_dir / "cameras.txt") if f.is_file())
            raise DataError(cameras_file, e.problem) from e
        if size != (cam.width, cam.height):
            cam = cam.scaled(size[0] / cam.width)  # images stored at another resolution than the model's
            if (cam.width, cam.height) != size:
                raise DataError(file, f"image is {size[0]}x{size[1]}, the COLMAP camera {cam_model.width}x{cam_model.height}")
        if factor != 1.0:
            cam = cam.scaled(1.0 / factor)
        views.append(View(camera=cam, source=ImageFile(file, (cam.width, cam.height)), camera_id=i, frame=0))

    if config.test_cameras is not None:
        test_ids = set(config.test_cameras)
        test = [v for v in views if v.camera_id in test_ids]
        train = [v for v in views if v.camera_id not in test_ids]
        split = f"test cameras {sorted(test_ids)}"
    elif len(views) >= LLFF_HOLD:
        test = [v for v in views if v.camera_id % LLFF_HOLD == 0]
        train = [v for v in views if v.camera_id % LLFF_HOLD != 0]
        split = f"every {LLFF_HOLD}th image is a test view"
    else:
        train, test = views, list(views)
        split = f"train=test (fewer than {LLFF_HOLD} images)"
    if not train:
        raise DataError(path, f"no training views left after holding out test cameras {sorted(config.test_cameras or ())}")

    def shipped():
        if len(model.points.xyz) == 0:
            return None
        xyz, rgb = model_points(model)
        return xyz.double().numpy(), rgb.double().numpy(), f"COLMAP model {model_dir.relative_to(path)} ({len(xyz)} points)"

    def random():
        from .n3v import random_frustum_points

        cams = [v.camera for v in train]
        xyz, rgb = random_frustum_points(cams, config.num_random_points, config.seed)
        return xyz, rgb, f"{config.num_random_points} random points in the camera frusta (seed {config.seed})"

    xyz, rgb, points_from = choose_points(config, train, shipped, random)
    points = torch.from_numpy(xyz).float().reshape(-1, 3)
    colors = torch.from_numpy(rgb).float().reshape(-1, 3)
    white = bool(config.white_background)
    return Scene(
        name=path.name,
        format="colmap",
        train_views=train,
        test_views=test,
        points=points,
        point_colors=colors,
        background=torch.full((3,), 1.0 if white else 0.0),  # cpu: host-side scene data, moved by the trainers
        cache=FrameCache(config.cache_bytes),
        info={
            "split": split,
            "model": str(model_dir.relative_to(path)),
            "images": len(images),
            "original_resolution": (model.cameras[images[0].camera_id].width, model.cameras[images[0].camera_id].height),
            "downscale": factor,
            "points": points_from,
        },
    )
