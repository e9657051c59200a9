"""Video writing and lazy, cache-bounded decoding."""

from __future__ import annotations

import numpy as np
import pytest

from moegs.data.scene import FrameCache
from moegs.data.video import VideoReader, probe_video, write_video
from moegs.errors import DataError


def gradient_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth ``[h, w, 3]`` uint8 frames, each distinct (a moving gradient), codec-friendly."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    off = np.random.default_rng(seed).uniform(0, 60, 3)
    return [
        np.stack([xx * 2 + 4 * t + off[0], yy * 3 + 2 * t + off[1], np.full_like(xx, 5 * t + off[2])], -1).clip(0, 255).astype(np.uint8)
        for t in range(n)
    ]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal within H.264 (crf 18, yuv420p) tolerance."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert d.mean() < 3.0 and d.max() < 24, (d.mean(), d.max())


def test_write_probe_and_sequential_read_with_tiny_cache(tmp_path):
    frames = gradient_frames(30)
    path = write_video(tmp_path / "v" / "a.mp4", iter(frames), fps=30, keyframe_interval=10)
    assert [p.name for p in (tmp_path / "v").iterdir()] == ["a.mp4"]  # no temporary left
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (64, 48, 30)
    assert info.fps == pytest.approx(30.0)
    assert list(info.keyframes) == [0, 10, 20]
    budget = 3 * frames[0].nbytes
    reader = VideoReader(path, FrameCache(budget))
    for t in range(30):
        _close(reader.frame(t), frames[t])
        assert reader.cache.nbytes <= budget
    assert reader.decoded == 30  # time order decodes each frame once, even with a 3-frame cache


def test_random_access_decodes_from_keyframe_and_caches_neighbours(tmp_path):
    frames = gradient_frames(30)
    path = write_video(tmp_path / "a.mp4", frames, fps=24, keyframe_interval=10)
    reader = VideoReader(path, FrameCache(1 << 26))
    _close(reader.frame(25), frames[25])
    assert reader.decoded == 6  # keyframe 20 .. 25
    assert all(reader.key(i) in reader.cache for i in range(20, 26))
    _close(reader.frame(22), frames[22])
    assert reader.decoded == 6  # a neighbour: from the cache
    _close(reader.frame(3), frames[3])
    _close(reader.frame(27), frames[27])
    assert reader.decoded == 6 + 4 + 8  # 0..3 after a seek; 20..27 again (25 was kept, 26 and 27 are new)


def test_downscale_while_decoding(tmp_path):
    frames = gradient_frames(4, 48, 64)
    path = write_video(tmp_path / "a.mp4", frames, fps=10)
    reader = VideoReader(path, FrameCache(1 << 24), size=(32, 24))
    out = reader.frame(2)
    assert out.shape == (24, 32, 3)
    box = frames[2].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    _close(out, box.round().astype(np.uint8))


def test_odd_sizes_are_padded(tmp_path):
    frames = [np.full((15, 21, 3), 100, np.uint8)] * 2
    info = probe_video(write_video(tmp_path / "odd.mp4", frames, fps=5))
    assert (info.width, info.height, info.num_frames) == (22, 16, 2)


def test_write_video_rejects_bad_frames_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", [np.zeros((8, 8, 3), np.float32)], fps=5)
    with pytest.raises(ValueError, match="differs"):
        write_video(tmp_path / "a.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], fps=5)
    assert list(tmp_path.iterdir()) == []


def test_truncated_video_is_a_data_error(tmp_path):
    path = write_video(tmp_path / "cam00.mp4", gradient_frames(20), fps=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cam00.mp4"):
        probe_video(path)
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="junk.mp4"):
        VideoReader(tmp_path / "junk.mp4", FrameCache())
