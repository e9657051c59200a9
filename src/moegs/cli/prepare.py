"""``moegs prepare VIDEOS_DIR [--out DIR]``: cameras and points for raw multi-view videos (thin layer
over :func:`moegs.data.prepare.prepare_videos`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "cmd_prepare"]


def cmd_prepare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..data.config import SfmOptions
    from ..data.prepare import prepare_videos

    options = SfmOptions(shared_intrinsics=not args.per_camera_intrinsics)
    if args.max_image_size is not None:
        options.max_image_size = args.max_image_size
    summary = prepare_videos(args.videos, args.out, options, overwrite=args.overwrite, progress=not args.quiet)
    out = Path(summary["out"])
    err = summary["mean_reprojection_error"]
    Console().print(
        f"{len(summary['cameras'])} cameras registered, {summary['points']} points"
        + (f" (mean reprojection error {err:.2f} px)" if err is not None else "")
        + f"; wrote {out / 'poses_bounds.npy'}, {out / 'points3D.ply'}, {out / 'prepare.json'}"
        + f"\ntrain on it: moegs train {out}"
    )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``prepare`` on the ``moegs`` sub-command parsers ``sub``."""
    p = sub.add_parser("prepare", help="SfM on the first frame of synchronised videos: write an N3V scene folder")
    p.add_argument("videos", help="folder of synchronised multi-view videos (*.mp4), no poses needed")
    p.add_argument("--out", help="scene folder to write (default: the videos' folder)")
    p.add_argument("--per-camera-intrinsics", action="store_true",
                   help="estimate one focal length per video (default: one shared by all)")
    p.add_argument("--max-image-size", type=int, help="downscale frames larger than this for feature extraction")
    p.add_argument("--overwrite", action="store_true", help="replace an existing poses_bounds.npy")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)
    return p
