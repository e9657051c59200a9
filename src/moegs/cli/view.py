"""``moegs view RUN_OR_CHECKPOINT``: the interactive web viewer (thin layer over :mod:`moegs.viewer`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "cmd_view"]


def cmd_view(args: argparse.Namespace) -> int:
    from ..viewer import ViewerConfig, ViewModel, serve

    cfg = ViewerConfig(host=args.host, port=args.port, max_side=args.max_side, fps=args.fps)
    if args.backend:
        cfg.backend = args.backend
    if args.device:
        cfg.device = args.device
    cfg.check()
    overrides = {k: getattr(args, k) for k in ("format", "downscale", "near") if getattr(args, k) is not None}
    try:
        model = ViewModel.load(args.checkpoint, args.data, overrides, backend=cfg.backend, device=cfg.device)
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing to keep or resume
        print("moegs view: stopped", file=sys.stderr)
        return 0
    if model.notice:
        print(f"moegs view: {model.notice}")
    serve(model, cfg)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``view`` on the ``moegs`` sub-command parsers ``sub``."""
    from ..data import FORMATS
    from ..render import BACKENDS
    from ..train.trainer import DEVICES
    from ..viewer import ViewerConfig

    d = ViewerConfig()
    p = sub.add_parser("view", help="interactive web viewer of an expert or a mixture (free camera, time slider)")
    p.add_argument("checkpoint", help="checkpoint file or run directory (expert or mixture)")
    p.add_argument("--data", help="scene folder, for its cameras (default: the one it was trained on)")
    p.add_argument("--format", choices=sorted(FORMATS), help="force the scene's format (default: detected)")
    p.add_argument("--downscale", type=float, help="scene image downscale (default: the training run's)")
    p.add_argument("--near", type=float, help="near plane of every camera, the free one included (default: the "
                   "scene cameras' own; the free camera takes the smallest)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default: {d.host}, this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port}; 0 picks a free one)")
    p.add_argument("--max-side", type=int, default=d.max_side, help=f"longest side of a still frame (default: {d.max_side})")
    p.add_argument("--fps", type=float, default=d.fps, help=f"playback speed in scene frames per second (default: {d.fps})")
    p.add_argument("--backend", choices=BACKENDS, help="rasterizer backend (default: auto)")
    p.add_argument("--device", choices=DEVICES, help="device (default: auto, cuda when present)")
    p.set_defaults(func=cmd_view)
    return p
