"""Frame stores: frames equal the lazy decoder's, reuse, invalidation, atomic builds, bad input, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from test_n3v import ring_c2w, write_n3v_scene
from test_video import gradient_frames

from moegs.data import DataConfig, load_scene
from moegs.data import framestore as fs
from moegs.data.framestore import FrameStore, StoredFrame
from moegs.data.scene import FrameCache
from moegs.data.video import VideoFrame, VideoReader, write_video
from moegs.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGS_CACHE_DIR", str(tmp_path / "cache"))


def _cfg(**kw) -> DataConfig:
    kw.setdefault("frame_store", "store")
    return DataConfig(format="n3v", points="random", num_random_points=10, **kw)


def _store(scene) -> FrameStore:
    stores = {v.source.store for v in scene.views}
    assert len(stores) == 1
    return stores.pop()


def _images(scene) -> dict[tuple[int, int], np.ndarray]:
    return {(v.camera_id, v.frame): v.source.load() for v in scene.views}


def _store_files(tmp_path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache" / "frames").glob("*") if p.suffix in (".npy", ".tmp"))  # stores, temporaries


def test_store_frames_equal_the_lazy_decoder_exactly_and_stay_out_of_the_data_folder(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), size=(48, 32), frames=14, keyframe_interval=6)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    for settings in ({"downscale": 2, "frame_step": 3}, {"downscale": 1, "max_frames": 5}, {"downscale": 1.5}):
        lazy = load_scene(tmp_path / "s", _cfg(frame_store="lazy", **settings))
        stored = load_scene(tmp_path / "s", _cfg(**settings))
        assert all(isinstance(v.source, VideoFrame) for v in lazy.views)
        assert all(isinstance(v.source, StoredFrame) for v in stored.views)
        a, b = _images(lazy), _images(stored)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype == np.uint8
            np.testing.assert_array_equal(a[k], b[k], err_msg=str((settings, k)))
        assert stored.info["frames_from"].startswith("frame store in")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    assert len(_store_files(tmp_path)) == 3 * 3  # one file per video and setting, no temporaries


def test_second_load_reuses_the_store_without_decoding(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=12, keyframe_interval=5)
    first = load_scene(tmp_path / "s", _cfg(frame_step=2))
    images = _images(first)
    store = _store(first)
    assert store.built == 3
    assert [r.decoded for r in store.readers] == [11, 11, 11]  # in order, up to the last kept frame, once
    second = load_scene(tmp_path / "s", _cfg(frame_step=2))
    store2 = _store(second)
    for v in second.views:
        np.testing.assert_array_equal(second.image(v).numpy(), first.image(v).numpy())
    assert store2.built == 0 and sum(r.decoded for r in store2.readers) == 0
    np.testing.assert_array_equal(store2.frame(2, 10), images[(2, 5)])


def test_a_changed_video_invalidates_its_store_only(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=8)
    first = load_scene(tmp_path / "s", _cfg(downscale=1))
    _images(first)
    old_files = _store_files(tmp_path)
    new = gradient_frames(8, 24, 32, seed=7)
    video = tmp_path / "s" / "cam01.mp4"
    stat = video.stat()
    write_video(video, new, fps=30, keyframe_interval=4)
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    second = load_scene(tmp_path / "s", _cfg(downscale=1))
    images = _images(second)
    store = _store(second)
    assert store.built == 1 and [r.decoded for r in store.readers] == [0, 8, 0]
    d = np.abs(images[(1, 5)].astype(int) - new[5].astype(int))
    assert d.mean() < 3.0, d.mean()
    lazy = load_scene(tmp_path / "s", _cfg(downscale=1, frame_store="lazy"))
    np.testing.assert_array_equal(lazy.train_views[5 + 0].source.load(), images[(lazy.train_views[5].camera_id, 5)])
    new_files = _store_files(tmp_path)
    assert len(new_files) == 3 and len(set(new_files) & set(old_files)) == 2  # the stale store was deleted


_KILLED_BUILD = """
import os, signal, sys
from moegs.data import DataConfig, load_scene
from moegs.data.video import VideoReader

original = VideoReader.iter_frames
def dying(self, stop=None):
    for n, item in enumerate(original(self, stop)):
        if self.path.name == "cam01.mp4" and n == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
VideoReader.iter_frames = dying
scene = load_scene(sys.argv[1], DataConfig(format="n3v", points="random", num_random_points=10, frame_store="store"))
scene.views[0].source.load()
"""


def test_a_killed_or_partial_build_is_not_trusted(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=8)
    env = dict(os.environ, MOEGS_CACHE_DIR=str(tmp_path / "cache"), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_BUILD), str(tmp_path / "s")], env=env, cwd=REPO, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    files = _store_files(tmp_path)
    assert len([f for f in files if f.suffix == ".npy"]) == 1  # cam00 finished; cam01 was killed mid-way
    assert len([f for f in files if f.suffix == ".tmp"]) == 1
    # A complete-looking name holding half a store (a copy cut short) is not trusted either.
    good = next(f for f in files if f.suffix == ".npy")
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    scene = load_scene(tmp_path / "s", _cfg())
    images = _images(scene)
    assert _store(scene).built == 3
    files = _store_files(tmp_path)
    assert len(files) == 3 and all(f.suffix == ".npy" for f in files)  # the dead build's temporary is gone
    lazy = _images(load_scene(tmp_path / "s", _cfg(frame_store="lazy")))
    for k, img in images.items():
        np.testing.assert_array_equal(img, lazy[k])


def test_a_truncated_video_is_a_data_error_naming_the_file(tmp_path):
    path = write_video(tmp_path / "cam00.mp4", gradient_frames(30, 48, 64), fps=30, keyframe_interval=10)
    reader = VideoReader(path, FrameCache(0))  # probed while whole
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = FrameStore([reader], range(30), tmp_path / "frames")
    with pytest.raises(DataError, match="cam00.mp4") as err:
        store.frame(0, 0)
    assert err.value.path == path
    assert [p.name for p in (tmp_path / "frames").iterdir()] == [".build.lock"]  # nothing half-built left
    with pytest.raises(DataError, match="cam00.mp4"):  # and loading the folder says the same at probe time
        VideoReader(path, FrameCache(0))


def test_an_unknown_frame_store_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="frame_store"):
        DataConfig(frame_store="mmap").check()


def test_auto_uses_the_store_for_long_gops_only(tmp_path):
    write_n3v_scene(tmp_path / "gop", ring_c2w(2), frames=4, keyframe_interval=4)
    write_n3v_scene(tmp_path / "intra", ring_c2w(2), frames=4, keyframe_interval=1)
    assert isinstance(load_scene(tmp_path / "gop", _cfg(frame_store="auto")).views[0].source, StoredFrame)
    assert isinstance(load_scene(tmp_path / "intra", _cfg(frame_store="auto")).views[0].source, VideoFrame)


def test_no_disk_space_falls_back_to_lazy_decoding_with_a_warning(tmp_path, monkeypatch):
    write_n3v_scene(tmp_path / "s", ring_c2w(2), frames=6)
    lazy = _images(load_scene(tmp_path / "s", _cfg(frame_store="lazy")))
    real = fs.shutil.disk_usage
    monkeypatch.setattr(fs.shutil, "disk_usage", lambda p: real(p)._replace(free=100 << 20))
    scene = load_scene(tmp_path / "s", _cfg())
    with pytest.warns(UserWarning, match=r"frame store needs .* GiB are free; decoding frames from the videos"):
        images = _images(scene)
    assert _store(scene).fallback and _store_files(tmp_path) == []
    for k in lazy:
        np.testing.assert_array_equal(images[k], lazy[k])


def test_build_streams_frame_by_frame_and_reads_stay_in_the_cache_budget(tmp_path):
    h, w, n = 96, 128, 48
    path = write_video(tmp_path / "v.mp4", gradient_frames(n, h, w), fps=30)
    frame_bytes = h * w * 3
    reader = VideoReader(path, FrameCache(0))
    store = FrameStore([reader], range(n), tmp_path / "frames", progress=False)
    tracemalloc.start()
    try:
        store.ensure()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.built == 1 and reader.decoded == n
    assert peak < 6 * frame_bytes, (peak, frame_bytes)  # a whole video would be 48 frames
    # Random reads through the scene's cache stay within its budget.
    cache = FrameCache(5 * frame_bytes)
    rng = np.random.default_rng(0)
    for i in rng.integers(0, n, 40):
        src = store.source(0, int(i))
        cache.get(src.key, src.load)
        assert cache.nbytes <= cache.max_bytes


def test_stores_of_deleted_videos_are_removed_by_the_next_build(tmp_path):
    write_n3v_scene(tmp_path / "a", ring_c2w(2), frames=4)
    write_n3v_scene(tmp_path / "b", ring_c2w(2), frames=4, keyframe_interval=2)
    _images(load_scene(tmp_path / "a", _cfg()))
    a_files = _store_files(tmp_path)
    assert len(a_files) == 2
    for video in (tmp_path / "a").glob("*.mp4"):
        video.unlink()
    _images(load_scene(tmp_path / "b", _cfg()))
    files = _store_files(tmp_path)
    assert len(files) == 2 and not set(files) & set(a_files)
    assert len(list((tmp_path / "cache" / "frames").glob("*.source"))) == 2


def test_concurrent_builders_decode_each_video_once(tmp_path):
    paths = [write_video(tmp_path / f"cam{i:02d}.mp4", gradient_frames(12, seed=i), fps=30, keyframe_interval=4) for i in range(2)]
    stores = [FrameStore([VideoReader(p, FrameCache(0)) for p in paths], range(0, 12, 2), tmp_path / "frames", progress=False)
              for _ in range(2)]
    threads = [threading.Thread(target=s.ensure) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.built for s in stores) == [0, 2]  # the second waited for the first, then found the files
    assert sum(r.decoded for s in stores for r in s.readers) == 2 * 11
    for v in range(2):
        np.testing.assert_array_equal(stores[0].frame(v, 10), stores[1].frame(v, 10))
