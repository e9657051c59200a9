"""Images read from files: the generic :class:`ImageSource` behind most loaders.

:func:`load_image` decodes one file with Pillow and, when asked, resizes it
with a box (area-average) filter, the right filter for downscaling: every
output pixel is the mean of the input pixels it covers. Transparency is kept
(an RGBA file stays RGBA, straight alpha) so that the :class:`Scene`
composites it over its own background; RGBA images are resized in
premultiplied float so that colours of transparent pixels never bleed into
the result. Any decoding failure or missing file becomes a
:class:`~moegs.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = ["ImageFile", "load_image", "read_image_size", "resize_image"]

# Pillow's errors for files that are not images, truncated, or absurdly large.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)
# 16-bit single-channel modes: read as float so their precision is not clipped to 8 bits.
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header only (nothing is decoded).

    Raises:
        DataError: the file is missing or is not an image Pillow can read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            return im.size
    except _DECODE_ERRORS as e:
        raise DataError(path, f"cannot read image: {e}") from e


def _to_array(im: Image.Image) -> np.ndarray:
    """``[H, W, 3|4]`` array of a decoded Pillow image: uint8, or float32 in ``[0, 1]`` for 16-bit grey."""
    if im.mode in _MODES_16BIT:
        grey = np.array(im, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    mode = "RGBA" if has_alpha else "RGB"
    return np.array(im if im.mode == mode else im.convert(mode))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``image`` ``[H, W, C]`` (C = 3 or 4) to ``size = (width, height)`` with a box filter.

    A box filter averages the input area under each output pixel (for an
    integer factor: the mean of each ``k x k`` block), computed in float32
    and rounded back to uint8 for uint8 input. RGBA images (straight alpha)
    are averaged premultiplied by alpha and un-premultiplied after, so fully
    transparent pixels contribute no colour.

    Returns:
        ``[height, width, C]`` array of the input's dtype.
    """
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an [H, W, 3|4] image, got shape {image.shape}")
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"target size must be at least 1x1, got {size}")
    if (image.shape[1], image.shape[0]) == (w, h):
        return image
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if x.shape[2] == 4:
        x = np.concatenate((x[..., :3] * x[..., 3:], x[..., 3:]), axis=-1)
    out = np.stack(
        [np.asarray(Image.fromarray(x[..., c], "F").resize((w, h), Image.Resampling.BOX)) for c in range(x.shape[2])],
        axis=-1,
    )
    if out.shape[2] == 4:
        a = out[..., 3:]
        out[..., :3] = np.where(a > 0, out[..., :3] / np.maximum(a, 1e-12), 0.0)
    out = np.clip(out, 0.0, 1.0)
    if image.dtype == np.uint8:
        return np.round(out * 255.0).astype(np.uint8)
    return out


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the image file ``path``, resized to ``size = (width, height)`` if given.

    Returns:
        ``[H, W, 3]`` (opaque) or ``[H, W, 4]`` (with transparency, straight
        alpha) array, uint8 (or float32 in ``[0, 1]`` for 16-bit greyscale files).

    Raises:
        DataError: the file is missing or does not decode.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            arr = _to_array(im)
    except _DECODE_ERRORS as e:
        raise DataError(path, f"cannot decode image: {e}") from e
    return arr if size is None else resize_image(arr, size)


@dataclass(frozen=True)
class ImageFile:
    """An image on disk, decoded on demand (an :class:`~moegs.data.scene.ImageSource`).

    Attributes:
        path: the file.
        size: ``(width, height)`` to resize to (the view camera's resolution),
            or ``None`` to keep the file's own size.
    """

    path: Path
    size: tuple[int, int] | None = None
    key: Hashable = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "key", ("file", str(self.path), self.size))

    def load(self) -> np.ndarray:
        """``[H, W, 3|4]`` decoded image (see :func:`load_image`)."""
        return load_image(self.path, self.size)
