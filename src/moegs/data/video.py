"""Video files: lazy, cache-aware frame decoding (PyAV) and an atomic H.264 writer.

Multi-view video datasets are far larger than memory once decoded (N3V: 20
cameras x 300 frames of 1352x1014 RGB at half resolution, about 25 GB), so
frames are decoded on demand into the scene's byte-budgeted
:class:`~moegs.data.scene.FrameCache`.

Decoding frame ``k`` of an H.264 stream needs every frame from the keyframe at
or before ``k``. A :class:`VideoReader` keeps one open decoder per file with a
*cursor* (the last frame it decoded). On a cache miss it either continues from
the cursor, when the cursor sits in the same group of pictures before ``k``, or
seeks to the keyframe before ``k``; the frames it decodes on the way are put in
the cache as well (at most a quarter of the cache budget per miss, so one
random access cannot flush it). Reading a video in time order therefore
decodes each frame once, whatever the cache budget.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Hashable, Iterable, Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation

from ..errors import DataError
from ..io import atomic_path
from .scene import FrameCache

__all__ = ["VideoInfo", "VideoReader", "VideoFrame", "probe_video", "write_video"]

_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class VideoInfo:
    """What demuxing a video (without decoding it) tells.

    Attributes:
        width, height: frame size in pixels.
        num_frames: number of frames.
        fps: average frame rate.
        frame_pts: ``[num_frames]`` int64 presentation timestamps, in display order.
        keyframes: ``[K]`` int64 indices (into display order) of the keyframes, ascending.
    """

    width: int
    height: int
    num_frames: int
    fps: float
    frame_pts: np.ndarray
    keyframes: np.ndarray


def _open(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), "r")
    except _AV_ERRORS as e:
        raise DataError(path, f"cannot open video (truncated or not a video?): {e}") from e
    if not container.streams.video:
        container.close()
        raise DataError(path, "has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Demux ``path`` to count its frames and find its keyframes.

    Raises:
        DataError: naming the file if it does not open, has no video stream or
            no frames, or is truncated (a packet extends past the end of the file).
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else -1
    if size < 0:
        raise DataError(path, "no such video file")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        pts, key = [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # flush packet
            if packet.is_corrupt or (packet.pos is not None and packet.pos + packet.size > size):
                raise DataError(path, f"truncated or corrupt: frame data of packet {len(pts)} is incomplete")
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
        listed = stream.frames  # the container's frame count (0 when it does not say)
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
    except _AV_ERRORS as e:
        raise DataError(path, f"cannot demux video (truncated or corrupt?): {e}") from e
    finally:
        container.close()
    if not pts:
        raise DataError(path, "video has no frames")
    if listed and len(pts) < listed:
        raise DataError(path, f"truncated: {len(pts)} of the {listed} frames listed in the container are present")
    order = np.argsort(pts, kind="stable")
    frame_pts = np.asarray(pts, dtype=np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(key)[order])
    if len(keyframes) == 0 or keyframes[0] != 0:
        raise DataError(path, "corrupt: the first frame is not a keyframe")
    return VideoInfo(width, height, len(frame_pts), float(rate) if rate else 0.0, frame_pts, keyframes.astype(np.int64))


class VideoReader:
    """Random access to the frames of one video file through a :class:`FrameCache`.

    Args:
        path: the video file.
        cache: where decoded frames live (shared with the Scene).
        size: ``(width, height)`` of the returned frames; ``None`` keeps the native size.
            Downscaling uses swscale's area filter while converting to RGB.
        info: the file's :func:`probe_video` result, when the caller has it already.
    """

    def __init__(
        self, path: str | Path, cache: FrameCache, size: tuple[int, int] | None = None, info: VideoInfo | None = None
    ) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path) if info is None else info
        self.cache = cache
        self.size = (self.info.width, self.info.height) if size is None else (int(size[0]), int(size[1]))
        self._index = {int(p): i for i, p in enumerate(self.info.frame_pts)}
        self._lock = threading.Lock()
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._cursor = -1  # index of the last frame the open decoder produced
        self.decoded = 0  # frames decoded so far (for tests and statistics)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # open decoders and locks do not cross processes
        state.update(_lock=None, _container=None, _frames=None, _cursor=-1)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    def key(self, index: int) -> Hashable:
        """Cache key of frame ``index`` at this reader's output size."""
        return ("video", str(self.path), int(index), self.size)

    def source(self, index: int) -> "VideoFrame":
        """An :class:`ImageSource` for frame ``index``."""
        if not 0 <= index < self.num_frames:
            raise DataError(self.path, f"frame {index} requested, the video has {self.num_frames}")
        return VideoFrame(self, int(index))

    def frame(self, index: int) -> np.ndarray:
        """``[H, W, 3]`` uint8 frame ``index`` (from the cache, or decoded into it)."""
        return self.cache.get(self.key(index), lambda: self.decode(index))

    def close(self) -> None:
        with self._lock:
            self._reset()

    def iter_frames(self, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames ``0 .. stop - 1`` (all when ``None``) in order, one at a time, on a decoder
        of its own (the random-access cursor is left alone); nothing goes into the cache.

        Yields:
            ``(index, [H, W, 3] uint8 frame at the reader's output size)``.

        Raises:
            DataError: naming the file when the stream is truncated or undecodable.
        """
        stop = self.num_frames if stop is None else min(int(stop), self.num_frames)
        expected = 0
        container = _open(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream) if stop > 0 else ():
                i = self._index.get(frame.pts) if frame.pts is not None else None
                if i != expected:
                    raise DataError(self.path, f"decoded frame {i} (timestamp {frame.pts}) where frame {expected} was due")
                self.decoded += 1
                expected += 1
                yield i, self._to_array(frame)
                if expected >= stop:
                    break
        except _AV_ERRORS as e:
            raise DataError(self.path, f"cannot decode frame {expected} (truncated or corrupt video?): {e}") from e
        finally:
            container.close()
        if expected < stop:
            raise DataError(self.path, f"truncated: the stream ended before frame {expected} of {self.num_frames}")

    # ------------------------------------------------------------- decoding
    def _reset(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._cursor = None, None, -1

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        w, h = self.size
        if (w, h) == (frame.width, frame.height):
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=Interpolation.AREA)

    def decode(self, index: int) -> np.ndarray:
        """Decode frame ``index`` (``[H, W, 3]`` uint8), caching the frames decoded on the way.

        Raises:
            DataError: naming the file when the stream is truncated or undecodable.
        """
        with self._lock:
            try:
                return self._decode(index)
            except _AV_ERRORS as e:
                self._reset()
                raise DataError(self.path, f"cannot decode frame {index} (truncated or corrupt video?): {e}") from e

    def _decode(self, index: int) -> np.ndarray:
        kf = int(self.info.keyframes[bisect.bisect_right(self.info.keyframes, index) - 1])
        if self._frames is None or not (kf - 1 <= self._cursor < index):
            if self._container is None:
                self._container = _open(self.path)
                self._container.streams.video[0].thread_type = "AUTO"
            stream = self._container.streams.video[0]
            self._container.seek(int(self.info.frame_pts[kf]), stream=stream, backward=True, any_frame=False)
            self._frames = self._container.decode(stream)
            self._cursor = kf - 1
        spare = self.cache.max_bytes // 4
        for frame in self._frames:
            i = self._index.get(frame.pts) if frame.pts is not None else None
            if i is None:
                raise DataError(self.path, f"decoded a frame with unknown timestamp {frame.pts}")
            self.decoded += 1
            self._cursor = i
            if i == index:
                return self._to_array(frame)
            if i > index:
                self._reset()
                raise DataError(self.path, f"cannot decode frame {index}: the stream resumed at frame {i}")
            key = self.key(i)
            if i >= kf and key not in self.cache:
                arr = self._to_array(frame)
                if arr.nbytes <= spare:
                    self.cache.put(key, arr)
                    spare -= arr.nbytes
        self._reset()
        raise DataError(self.path, f"truncated: the stream ended before frame {index} of {self.num_frames}")


@dataclass(frozen=True)
class VideoFrame:
    """:class:`ImageSource` of one frame of a :class:`VideoReader`'s video."""

    reader: VideoReader
    index: int

    @property
    def key(self) -> Hashable:
        return self.reader.key(self.index)

    def load(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 frame at the reader's output size."""
        return self.reader.decode(self.index)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    crf: int = 18,
    keyframe_interval: int | None = None,
    preset: str | None = None,
) -> Path:
    """Encode ``frames`` (each ``[H, W, 3]`` uint8) as an H.264/yuv420p MP4, atomically.

    The file is written next to ``path`` under a temporary name and renamed into
    place (:func:`moegs.io.atomic_path`), so readers never see a partial video. yuv420p
    needs even sizes: an odd width or height is padded by repeating the last
    column or row.

    Args:
        path: output ``.mp4`` file (folders are created).
        frames: the frames, all the same size; consumed once, lazily.
        fps: frame rate.
        crf: x264 constant rate factor (0 lossless luma, 18 visually lossless, 23 default).
        keyframe_interval: frames between keyframes; ``None`` lets x264 choose.
        preset: x264 speed preset (``"ultrafast"`` ... ``"veryslow"``); ``None``: x264's default (medium).

    Returns:
        ``path``.
    """
    path = Path(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(tmp, "w", format="mp4") as out:
            stream, shape = None, None
            for n, arr in enumerate(frames):
                arr = np.asarray(arr)
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                    raise ValueError(f"frame {n}: expected an [H, W, 3] uint8 array, got {arr.dtype} {arr.shape}")
                if stream is None:
                    shape = arr.shape
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(100_000))
                    stream.width, stream.height = arr.shape[1] + arr.shape[1] % 2, arr.shape[0] + arr.shape[0] % 2
                    stream.pix_fmt = "yuv420p"
                    options = {"crf": str(crf)} if preset is None else {"crf": str(crf), "preset": preset}
                    if keyframe_interval is not None:
                        k = int(keyframe_interval)
                        options["x264-params"] = f"keyint={k}:min-keyint={k}:scenecut=0"
                    stream.options = options
                elif arr.shape != shape:
                    raise ValueError(f"frame {n}: size {arr.shape} differs from the first frame's {shape}")
                if arr.shape[0] % 2 or arr.shape[1] % 2:
                    arr = np.pad(arr, ((0, arr.shape[0] % 2), (0, arr.shape[1] % 2), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                    out.mux(packet)
            if stream is None:
                raise ValueError("write_video: no frames to write")
            for packet in stream.encode(None):
                out.mux(packet)
    return path
