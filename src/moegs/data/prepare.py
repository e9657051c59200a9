"""``moegs prepare``: turn a folder of synchronised multi-view videos without poses into an N3V scene.

Input: ``VIDEOS_DIR/*.mp4``, at least two, one per camera, all of one size and
started at the same instant. The first frame of every video goes through
incremental SfM (:func:`moegs.data.sfm.reconstruct`: pinhole cameras, the
principal point at the image centre, one focal length shared by all videos or
one each). Every camera must register.

Output (the N3V layout, :mod:`moegs.data.n3v`), in ``out`` (default: the videos' folder):

- ``poses_bounds.npy``: one LLFF row per video, in the SfM model's world frame
  (COLMAP's: arbitrary origin, orientation and scale), ``near``/``far`` from the
  depths of the points each camera sees;
- ``points3D.ply``: the filtered SfM points with their colours;
- ``camNN.mp4``: relative symbolic links to the videos (in sorted file-name
  order) unless they are already named so in ``out``;
- ``prepare.json``: which video became which camera, and the SfM statistics.

Nothing is written before SfM has succeeded; then every file is first written
beside its target and renamed into place, ``poses_bounds.npy`` last (its
presence is what makes the folder an N3V scene).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import io
from ..errors import DataError
from .config import SfmOptions
from .n3v import poses_bounds, write_ply_points
from .scene import FrameCache
from .sfm import SfmError, reconstruct
from .video import VideoReader, probe_video

__all__ = ["prepare_videos"]

_CAM = re.compile(r"^cam(\d+)\.mp4$")


def _first_frames(videos: list[Path]) -> list[np.ndarray]:
    """``[H, W, 3]`` uint8 first frame of each video; all videos must have one size."""
    infos = [probe_video(v) for v in videos]
    w, h = infos[0].width, infos[0].height
    for v, info in zip(videos, infos):
        if (info.width, info.height) != (w, h):
            raise DataError(v, f"video is {info.width}x{info.height} but {videos[0].name} is {w}x{h}: "
                               "the videos of one capture must have one size")
    frames = []
    for v, info in zip(videos, infos):
        reader = VideoReader(v, FrameCache(0), None, info)
        try:
            frames.append(reader.frame(0))
        finally:
            reader.close()
    return frames


def _link_names(videos: list[Path], out: Path) -> list[str]:
    """The ``camNN.mp4`` name of each video in ``out`` (its own name when it already is one there)."""
    if all(v.parent.resolve() == out.resolve() and _CAM.match(v.name) for v in videos):
        return [v.name for v in videos]
    names = [f"cam{i:02d}.mp4" for i in range(len(videos))]
    for v, n in zip(videos, names):
        target = out / n
        if (target.exists() or target.is_symlink()) and not (target.exists() and target.resolve() == v.resolve()):
            raise DataError(target, f"exists and is not {v}: choose another --out")
    return names


def prepare_videos(videos_dir: str | Path, out: str | Path | None = None, options: SfmOptions | None = None,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Run SfM on the first frame of ``videos_dir/*.mp4`` and write an N3V scene (module docstring).

    Args:
        videos_dir: folder of the synchronised videos.
        out: the scene folder to write (default ``videos_dir``).
        options: SfM settings (``shared_intrinsics``: one focal length for all videos).
        overwrite: replace an existing ``poses_bounds.npy`` in ``out``.
        progress: show progress bars (on a terminal).

    Returns:
        What ``prepare.json`` holds: ``out``, ``cameras`` (video -> camera file), ``points``,
        ``mean_reprojection_error``, ``focal_lengths`` and the SfM statistics.

    Raises:
        DataError: fewer than two videos, videos of different sizes, an unreadable video, a camera
            SfM did not register (naming them), or an existing scene in ``out`` without ``overwrite``.
    """
    videos_dir = Path(videos_dir)
    options = options or SfmOptions()
    options.check()
    if not videos_dir.is_dir():
        raise DataError(videos_dir, "no such directory (expected a folder of synchronised *.mp4 videos)")
    videos = sorted(videos_dir.glob("*.mp4"))
    if len(videos) < 2:
        found = f" ({videos[0].name})" if videos else ""
        raise DataError(videos_dir, f"needs at least 2 synchronised videos (*.mp4), found {len(videos)}{found}")
    out = videos_dir if out is None else Path(out)
    if (out / "poses_bounds.npy").exists() and not overwrite:
        raise DataError(out / "poses_bounds.npy", "exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a directory")
    names = _link_names(videos, out)

    frames = _first_frames(videos)
    try:
        model = reconstruct(frames, options, progress)
    except SfmError as e:
        raise SfmError(videos_dir, e.problem) from None
    missing = [v.name for v, c in zip(videos, model.cameras) if c is None]
    if missing:
        k = len(videos) - len(missing)
        raise SfmError(videos_dir, f"SfM registered {k} of {len(videos)} cameras; not registered: {', '.join(missing)} "
                                   "(too little overlap or texture in their first frames)")
    cameras = model.cameras
    pts = model.points
    summary = {
        "out": str(out),
        "cameras": {v.name: n for v, n in zip(videos, names)},
        "points": int(len(pts.xyz)),
        "mean_reprojection_error": float(pts.error.mean()) if len(pts.error) else None,
        "focal_lengths": [round(c.fx, 3) for c in cameras],
        "shared_intrinsics": options.shared_intrinsics,
        "sfm": pts.stats,
    }

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".moegs-prepare-", dir=out))
    try:
        for v, n in zip(videos, names):
            if not (out / n).exists():
                os.symlink(os.path.relpath(v.resolve(), out.resolve()), staging / n)
        write_ply_points(staging / "points3D.ply", pts.xyz, pts.rgb)
        np.save(staging / "poses_bounds.npy", poses_bounds(cameras))
        io.write_json(staging / "prepare.json", summary)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == "poses_bounds.npy"):  # poses last
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
