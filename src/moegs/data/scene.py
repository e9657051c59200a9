"""One ``Scene`` type behind every dataset format.

A scene is a list of *views* (a camera at a time, with an image to be
decoded on demand), split into train and test, plus initial points and the
scene's spatial extent. Images are decoded lazily and kept in a byte-budgeted
LRU cache, so a 6000-frame multi-view video never has to fit in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Protocol

import numpy as np
import torch
from torch import Tensor

from ..cameras import Camera

__all__ = ["ArrayImage", "ImageSource", "View", "Scene", "FrameCache", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 4 << 30  # 4 GiB


class ImageSource(Protocol):
    """Something that can decode one image.

    ``key`` identifies the decoded image for the cache; ``load()`` returns an
    ``[H, W, 3]`` or ``[H, W, 4]`` array, ``uint8`` or float in ``[0, 1]``,
    already at the view camera's resolution.
    """

    key: Hashable

    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayImage:
    """An image already in memory (generated scenes, tests)."""

    key: Hashable
    array: np.ndarray = field(compare=False, repr=False)

    def load(self) -> np.ndarray:
        return self.array


@dataclass(frozen=True)
class View:
    """A camera at one time, with the image it saw.

    Attributes:
        camera: intrinsics/extrinsics at the image's resolution; ``camera.time`` in ``[0, 1]``.
        source: decodes the image.
        camera_id: index of the physical camera in the rig (0 for monocular data).
        frame: index of the frame in time.
    """

    camera: Camera
    source: ImageSource
    camera_id: int = 0
    frame: int = 0

    @property
    def time(self) -> float:
        return self.camera.time


class FrameCache:
    """A thread-safe LRU cache of decoded images bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, loader: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = loader()
        self.put(key, value)
        return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            if value.nbytes > self.max_bytes:
                return  # larger than the whole budget: never cached
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


@dataclass
class Scene:
    """A dataset in moegs's internal convention (OpenCV cameras, times in ``[0, 1]``).

    Attributes:
        name: scene name (the folder's).
        format: the loader that read it (``"n3v"``, ``"dnerf"``, ...).
        train_views, test_views: the split.
        points: ``[M, 3]`` initial points (world coordinates).
        point_colors: ``[M, 3]`` their colours in ``[0, 1]``.
        background: ``[3]`` colour composited behind RGBA images and used when rendering.
        cache: the decoded-image cache shared by all views.
        info: format-specific facts for ``moegs inspect`` (frames listed vs present, ...).
    """

    name: str
    format: str
    train_views: list[View]
    test_views: list[View]
    points: Tensor
    point_colors: Tensor
    background: Tensor = field(default_factory=lambda: torch.zeros(3))  # cpu: host-side scene data, moved by the trainers
    cache: FrameCache = field(default_factory=FrameCache)
    info: dict = field(default_factory=dict)

    # ----------------------------------------------------------------- images
    def image(self, view: View) -> Tensor:
        """``[H, W, 3]`` float32 image in ``[0, 1]``; RGBA is composited over ``background``."""
        arr = self.cache.get(view.source.key, view.source.load)
        img = torch.from_numpy(np.ascontiguousarray(arr))
        img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        if img.shape[-1] == 4:
            a = img[..., 3:4]
            img = img[..., :3] * a + self.background.to(img) * (1.0 - a)
        return img

    # --------------------------------------------------------------- geometry
    @property
    def views(self) -> list[View]:
        return self.train_views + self.test_views

    @property
    def times(self) -> list[float]:
        """Distinct normalised times of all views, sorted."""
        return sorted({v.time for v in self.views})

    @property
    def is_dynamic(self) -> bool:
        return len(self.times) > 1

    @property
    def num_cameras(self) -> int:
        return len({v.camera_id for v in self.views})

    def camera_centers(self) -> Tensor:
        """``[V, 3]`` distinct camera centres of the training views."""
        c = torch.stack([v.camera.center for v in self.train_views])
        return torch.unique(c.round(decimals=5), dim=0)

    @property
    def center(self) -> Tensor:
        """``[3]`` mean of the training camera centres."""
        return self.camera_centers().mean(0)

    @property
    def extent(self) -> float:
        """Spatial scale of the scene, as 3DGS defines it: 1.1 x the largest camera distance
        from the cameras' mean centre (or the radius of the points when the cameras coincide)."""
        c = self.camera_centers()
        r = float((c - c.mean(0)).norm(dim=-1).max()) if len(c) > 1 else 0.0
        if r < 1e-6 and len(self.points):
            r = float((self.points - self.points.mean(0)).norm(dim=-1).quantile(0.9))
        return 1.1 * max(r, 1e-6)

    def resolution(self) -> tuple[int, int]:
        """``(width, height)`` of the first training view."""
        cam = self.train_views[0].camera
        return cam.width, cam.height
