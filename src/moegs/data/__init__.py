"""Dataset loaders: every format of the field read into one :class:`Scene`.

Each format is a module with ``detect(path) -> bool`` and
``load(path, config) -> Scene``; :func:`load_scene` picks one from the
explicit registry :data:`FORMATS` by detection, or as forced by ``config.format``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ConfigError, DataError
from .config import DataConfig
from .scene import ArrayImage, FrameCache, ImageSource, Scene, View

__all__ = ["ArrayImage", "FORMATS", "DataConfig", "FrameCache", "ImageSource", "Scene", "View", "detect_format", "load_scene"]

# name -> module implementing it. Order matters for detection: most specific first.
FORMATS: dict[str, str] = {
    "n3v": "moegs.data.n3v",
    "technicolor": "moegs.data.technicolor",
    "dnerf": "moegs.data.dnerf",
    "panoptic": "moegs.data.panoptic",
    "colmap": "moegs.data.static_colmap",
}


def _module(name: str):
    return importlib.import_module(FORMATS[name])


def detect_format(path: str | Path) -> str:
    """Name of the format of the scene folder ``path``; raises :class:`DataError` if none fits."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if not path.is_dir():
        raise DataError(path, "is not a directory (a scene is a folder)")
    for name in FORMATS:
        if _module(name).detect(path):
            return name
    raise DataError(
        path,
        "unknown layout: expected one of N3V (camXX.mp4 + poses_bounds.npy), Technicolor "
        "(cameras_parameters.txt), D-NeRF (transforms_train.json), Panoptic (train_meta.json) "
        "or COLMAP (sparse/0 + images/)",
    )


def load_scene(path: str | Path, config: DataConfig | None = None) -> Scene:
    """Read the scene in folder ``path`` (format detected unless ``config.format`` is set)."""
    config = config or DataConfig()
    config.check()
    path = Path(path)
    if config.format is not None:
        if config.format not in FORMATS:
            raise DataError(None, f"unknown format {config.format!r}; choose from {', '.join(FORMATS)}")
        if not path.is_dir():
            raise DataError(path, "no such directory")
        name = config.format
    else:
        name = detect_format(path)
    scene = _module(name).load(path, config)
    scene.info.setdefault("path", str(path.resolve()))
    for v in scene.views if config.near is not None else ():
        if not config.near < v.camera.far:
            raise ConfigError(f"near {config.near} is not below camera {v.camera.name!r}'s far plane {v.camera.far}")
    return scene
