"""The file-backed image source: decoding, alpha, box-filter resizing and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moegs.data.images import ImageFile, load_image, read_image_size, resize_image
from moegs.errors import DataError


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """``[H/k, W/k, C]`` mean of each ``k x k`` block of ``x`` ``[H, W, C]``."""
    h, w, c = x.shape
    return x.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))


def _over(rgba: np.ndarray, bg: float) -> np.ndarray:
    """Straight-alpha float RGBA ``[..., 4]`` composited over a grey level ``bg``."""
    return rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_rgb_file_decodes_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable
    assert read_image_size(tmp_path / "a.png") == (20, 12)


def test_integer_downscale_is_block_mean(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", size=(6, 4))
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out.astype(np.float64), _block_mean(arr.astype(np.float64), 3), atol=0.51)


def test_rgba_resize_keeps_alpha_and_does_not_bleed(tmp_path: Path, rng: np.random.Generator) -> None:
    # Opaque blue object on fully transparent pixels whose (invisible) colour is pure red.
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    mask = rng.random((16, 16)) < 0.5
    rgba[mask] = (0, 0, 255, 255)
    rgba[~mask, 3] = rng.integers(0, 40, int((~mask).sum()))  # some faint, mostly transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", size=(8, 8))
    assert out.shape == (8, 8, 4) and out.dtype == np.uint8
    f = rgba.astype(np.float64) / 255.0
    for bg in (0.0, 1.0):
        expected = _block_mean(_over(f, bg), 2)
        got = _over(out.astype(np.float64) / 255.0, bg)
        np.testing.assert_allclose(got, expected, atol=1.5 / 255.0)


def test_non_integer_resize_preserves_mean(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    out = resize_image(arr, (7, 11))
    assert out.shape == (11, 7, 3)
    assert abs(float(out.mean()) - float(arr.mean())) < 1.0
    up = resize_image(arr[:4, :4], (8, 8))  # box upsampling: each pixel repeated
    np.testing.assert_array_equal(up, arr[:4, :4].repeat(2, axis=0).repeat(2, axis=1))


def test_modes_are_normalised(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out[..., 1], grey)

    la = Image.merge("LA", (Image.fromarray(grey, "L"), Image.fromarray(255 - grey, "L")))
    la.save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (5, 6, 4)
    np.testing.assert_array_equal(out[..., 3], 255 - grey)

    pal = Image.fromarray(grey % 4, "L").convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.shape == (5, 6, 4)
    np.testing.assert_array_equal(out[..., 3] == 0, (grey % 4) == 0)

    deep = rng.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.float32 and out.shape == (5, 6, 3)
    np.testing.assert_allclose(out[..., 0], deep / 65535.0, atol=1e-6)


def test_image_file_source(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    full, half = ImageFile(tmp_path / "a.jpg"), ImageFile(str(tmp_path / "a.jpg"), (4, 4))
    assert full.key != half.key and half.key == ImageFile(tmp_path / "a.jpg", (4, 4)).key
    assert full.load().shape == (8, 8, 3) and half.load().shape == (4, 4, 3)
    np.testing.assert_array_equal(half.load(), load_image(tmp_path / "a.jpg", (4, 4)))


def test_missing_and_broken_files_raise_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(DataError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(DataError, match="nothere.png"):
        read_image_size(tmp_path / "nothere.png")
    with pytest.raises(DataError, match="nothere.png"):
        ImageFile(tmp_path / "nothere.png", (2, 2)).load()

    (tmp_path / "garbage.png").write_bytes(b"definitely not an image" * 10)
    with pytest.raises(DataError, match="garbage.png"):
        load_image(tmp_path / "garbage.png")
    with pytest.raises(DataError, match="garbage.png"):
        read_image_size(tmp_path / "garbage.png")

    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.png"):
        load_image(tmp_path / "truncated.png")
