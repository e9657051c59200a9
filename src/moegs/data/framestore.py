"""Frame stores: each video decoded once, in order, into an uncompressed file of its frames.

Random access to a long-GOP H.264 video decodes from the keyframe before the
frame asked for: on N3V (20 cameras x 300 frames, loaded at 1352x1014) one random
training frame costs hundreds of milliseconds through :class:`~moegs.data.video.VideoReader`,
so training waits for the decoder. Published pipelines extract every frame to
images first; a :class:`FrameStore` does the same, once, on first use:

* one ``.npy`` file per video and decode setting, ``[F, H, W, 3]`` uint8 at the
  loaded resolution, holding exactly the frames the scene uses (readable by
  ``np.load(file, mmap_mode="r")``);
* kept in ``$MOEGS_CACHE_DIR/frames`` (default ``~/.cache/moegs/frames``), never in
  the data folder unless ``DataConfig.frame_store_dir`` points there;
* named by a hash of the video's absolute path, output size and frame indices
  (``downscale``, ``frame_step``, ``max_frames``), and of its size and
  modification time: an edited video gets a new store, and the stale one is deleted
  (as are the stores of videos that no longer exist, whenever a store is built);
* built video by video, streaming one decoded frame at a time into a temporary
  file that is renamed into place when complete, so a killed build leaves nothing
  that is trusted later (its temporary file is removed by the next build), and
  memory stays at a few frames whatever the video's length;
* checked against the free disk space first: a store that would not fit is not
  built, with a warning, and the frames are decoded from the videos instead.

Frames are read with ``pread`` into fresh arrays that go through the scene's
:class:`~moegs.data.scene.FrameCache`, so the process's memory stays within the
cache budget (a memory map would leave every page read resident in the process).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..io import atomic_path, cache_dir, write_text
from .video import VideoReader

__all__ = ["FrameStore", "StoredFrame", "store_dir", "use_store"]

_VERSION = "frames-v1"  # bump when the file layout changes
_DISK_MARGIN = 256 << 20  # bytes left free on the disk after a build


def store_dir(configured: str | None = None) -> Path:
    """Folder of the frame stores: ``configured``, else ``$MOEGS_CACHE_DIR/frames`` (``~/.cache/moegs/frames``)."""
    return Path(configured) if configured else cache_dir() / "frames"


def use_store(mode: str, readers: Sequence[VideoReader]) -> bool:
    """Whether a scene of ``readers`` reads its frames from a store under ``DataConfig.frame_store`` ``mode``.

    ``"auto"`` uses a store unless every video is intra-only (a keyframe per frame,
    where random access decodes one frame anyway). ``mode`` is one of ``FRAME_STORE_MODES``
    (``DataConfig.check`` makes sure).
    """
    if mode == "auto":
        return any(len(r.info.keyframes) < r.num_frames for r in readers)
    return mode == "store"


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Entry:
    """The store file of one video: its settings' name prefix, its file, its frames."""

    reader: VideoReader
    frames: tuple[int, ...]  # source frame indices, in store order
    prefix: str  # hash of (path, output size, frames): one per video and decode setting
    file: Path  # prefix + hash of the source's size and mtime

    @property
    def shape(self) -> tuple[int, int, int, int]:
        w, h = self.reader.size
        return (len(self.frames), h, w, 3)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


class FrameStore:
    """The frames ``frames`` of every video in ``readers``, from store files built on first use.

    Args:
        readers: one reader per video, at the scene's output size (their ``size``).
        frames: ``[F]`` source frame indices the scene uses (the same for every video).
        root: folder of the store files (see :func:`store_dir`).
        progress: show a tqdm bar (frames decoded, ETA) while building.

    Attributes:
        built: videos this object decoded into new store files.
        fallback: True when the store could not be used (no disk space) and frames are
            decoded from the videos.
    """

    def __init__(self, readers: Sequence[VideoReader], frames: Sequence[int], root: str | Path, progress: bool = True) -> None:
        self.root = Path(root)
        self.readers = list(readers)
        self.frames = tuple(int(f) for f in frames)
        if not self.frames or self.frames[0] < 0 or any(b <= a for a, b in zip(self.frames, self.frames[1:])):
            raise DataError(None, f"frame store: frame indices must be increasing and >= 0, got {self.frames[:4]}...")
        for r in self.readers:
            if self.frames[-1] >= r.num_frames:
                raise DataError(r.path, f"frame {self.frames[-1]} requested, the video has {r.num_frames}")
        self._slot = {f: k for k, f in enumerate(self.frames)}
        self.entries = [self._entry(r) for r in self.readers]
        self.progress = progress
        self.built = 0
        self.fallback = False
        self._ready = False
        self._lock = threading.Lock()
        # Open store files (raw descriptors: pread needs no seek, so threads and forks share them),
        # closed when the store is garbage-collected.
        self._fds: dict[int, int] = {}
        weakref.finalize(self, _close_fds, self._fds)
        self._offset: dict[int, int] = {}

    def _entry(self, reader: VideoReader) -> _Entry:
        path = reader.path.resolve()
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(path, f"cannot stat video: {e}") from e
        prefix = _digest(_VERSION, str(path), reader.size, self.frames)
        return _Entry(reader, self.frames, prefix, self.root / f"{prefix}-{_digest(st.st_size, st.st_mtime_ns)}.npy")

    # ------------------------------------------------------------------ access
    def source(self, video: int, index: int) -> "StoredFrame":
        """An :class:`ImageSource` for source frame ``index`` of video ``video``."""
        if index not in self._slot:
            raise DataError(self.readers[video].path, f"frame {index} is not in the frame store")
        return StoredFrame(self, int(video), int(index))

    def frame(self, video: int, index: int) -> np.ndarray:
        """``[H, W, 3]`` uint8 source frame ``index`` of video ``video`` (building the store on first use)."""
        if not self.ensure():
            return self.readers[video].decode(index)
        entry = self.entries[video]
        _, h, w, _ = entry.shape
        out = np.empty((h, w, 3), np.uint8)
        fd = self._fd(video)
        got = os.preadv(fd, [out], self._offset[video] + self._slot[index] * out.nbytes)
        if got != out.nbytes:
            raise DataError(entry.file, f"frame store shorter than its header says (frame {index}); delete it to rebuild")
        return out

    def _fd(self, video: int) -> int:
        fd = self._fds.get(video)
        if fd is None:
            with self._lock:
                fd = self._fds.get(video)
                if fd is None:
                    fd = self._fds[video] = os.open(self.entries[video].file, os.O_RDONLY)
        return fd

    # ------------------------------------------------------------------ build
    def ensure(self) -> bool:
        """Build the missing store files (once per process); False when falling back to the videos."""
        if self._ready:
            return not self.fallback
        with self._lock:
            if not self._ready:
                self._build_missing()
                self._ready = True
        return not self.fallback

    def _valid_offset(self, entry: _Entry) -> int | None:
        """Data offset of ``entry.file`` when it is a complete store of the expected shape, else None."""
        try:
            with open(entry.file, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version != (1, 0):
                    return None
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                offset = f.tell()
        except (OSError, ValueError):
            return None
        if shape != entry.shape or fortran or dtype != np.uint8:
            return None
        return offset if entry.file.stat().st_size == offset + entry.nbytes else None

    def _missing(self) -> list[int]:
        """Videos without a complete store file (the others' data offsets are recorded)."""
        missing = []
        for v, entry in enumerate(self.entries):
            offset = self._valid_offset(entry)
            if offset is None:
                missing.append(v)
            else:
                self._offset[v] = offset
        return missing

    def _fall_back(self, problem: str) -> None:
        warnings.warn(
            f"{self.root}: {problem}; decoding frames from the videos instead (slow random access). Free disk "
            "space, or set MOEGS_CACHE_DIR or data.frame_store_dir to another disk, or data.frame_store=lazy",
            stacklevel=4,
        )
        self.fallback = True

    def _build_missing(self) -> None:
        if not self._missing():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".build.lock", "a")
        except OSError as e:
            return self._fall_back(f"cannot write the frame store ({e.strerror})")
        with lock:
            # One builder at a time (other processes of a run wait here, then find the files built);
            # the kernel releases the lock of a killed builder.
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = self._missing()
            if not missing:
                return
            self._remove_dead_temporaries()
            self._remove_orphans()
            need = sum(self.entries[v].nbytes for v in missing)
            free = shutil.disk_usage(self.root).free
            if need + _DISK_MARGIN > free:
                return self._fall_back(f"the frame store needs {need / 2**30:.2f} GiB but {free / 2**30:.2f} GiB are free")
            total = len(missing) * len(self.frames)
            with tqdm(total=total, desc="frame store", unit="frame", disable=None if self.progress else True, dynamic_ncols=True) as bar:
                for v in missing:
                    self._offset[v] = self._build(self.entries[v], bar)
                    self.built += 1

    def _remove_dead_temporaries(self) -> None:
        """Delete the temporary files of killed builds (called with the build lock held: no build is running)."""
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Delete the stores of videos that no longer exist (each store's ``<prefix>.source`` names its video)."""
        for note in self.root.glob("*.source"):
            try:
                video = Path(note.read_text())
            except OSError:
                continue
            if not video.exists():
                for file in self.root.glob(f"{note.stem}-*.npy"):
                    file.unlink(missing_ok=True)
                note.unlink(missing_ok=True)

    def _build(self, entry: _Entry, bar: tqdm) -> int:
        """Decode ``entry``'s video into its store file atomically; returns the data offset."""
        reader = entry.reader
        wanted = set(entry.frames)
        _, h, w, _ = entry.shape
        with atomic_path(entry.file) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": entry.shape})
            offset = f.tell()
            written = 0
            for i, arr in reader.iter_frames(stop=entry.frames[-1] + 1):
                if i not in wanted:
                    continue
                if arr.shape != (h, w, 3):
                    raise DataError(reader.path, f"frame {i} decoded as {arr.shape}, expected {(h, w, 3)}")
                f.write(np.ascontiguousarray(arr).data)  # frames are increasing: store order
                written += 1
                bar.update(1)
            if written != len(entry.frames):
                raise DataError(reader.path, f"frame store: decoded {written} of the {len(entry.frames)} frames")
            f.flush()
            os.fsync(f.fileno())
        for stale in self.root.glob(f"{entry.prefix}-*.npy"):  # older versions of the same video
            if stale != entry.file:
                stale.unlink(missing_ok=True)
        write_text(self.root / f"{entry.prefix}.source", str(reader.path.resolve()))
        return offset


def _close_fds(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


@dataclass(frozen=True)
class StoredFrame:
    """:class:`ImageSource` of one frame of a :class:`FrameStore` (the same cache key as the video's frame)."""

    store: FrameStore
    video: int
    index: int

    @property
    def reader(self) -> VideoReader:
        return self.store.readers[self.video]

    @property
    def key(self) -> Hashable:
        return self.reader.key(self.index)

    def load(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 frame at the reader's output size."""
        return self.store.frame(self.video, self.index)
