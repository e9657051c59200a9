"""``moegs export RUN --time T [--times A:B:N] --out PATH``: Gaussians as 3DGS PLY or ``.splat``
(thin layer over :mod:`moegs.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "cmd_export", "parse_times"]


def parse_times(args: argparse.Namespace) -> list[float]:
    """The export times: ``--time T`` or ``--times A:B:N`` (N evenly spaced from A to B), each in [0, 1]."""
    from ..errors import ConfigError

    if args.times is not None:
        try:
            a, b, n = args.times.split(":")
            a, b, n = float(a), float(b), int(n)
        except ValueError:
            raise ConfigError(f"--times {args.times!r}: expected A:B:N, e.g. 0:1:24") from None
        if n < 1:
            raise ConfigError(f"--times {args.times!r}: N must be at least 1")
        times = [a + (b - a) * i / max(1, n - 1) for i in range(n)] if n > 1 else [a]
    else:
        times = [args.time]
    bad = [t for t in times if not 0.0 <= t <= 1.0]
    if bad:
        raise ConfigError(f"time {bad[0]:g} is outside [0, 1] (times are normalised over the scene)")
    return times


def _writable(out: Path) -> None:
    from ..errors import ConfigError

    parent = out.parent if out.suffix else out
    probe = parent
    while not probe.exists():
        probe = probe.parent
    import os

    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"{out}: cannot write there ({probe} is not a writable folder)")


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_gaussians
    from ..moe.checkpoint import FORMAT as MIXTURE_FORMAT
    from ..train.checkpoint import FORMAT as EXPERT_FORMAT
    from ..train.checkpoint import expert_from_payload, load_checkpoint, resolve_checkpoint

    times = parse_times(args)
    if args.prune is not None and not 0 < args.prune <= 1:
        from ..errors import ConfigError

        raise ConfigError(f"--prune {args.prune}: the share of the blend to keep must be in (0, 1]")
    ckpt = resolve_checkpoint(args.run)
    payload = load_checkpoint(ckpt, (EXPERT_FORMAT, MIXTURE_FORMAT))
    is_mixture = payload["format"] == MIXTURE_FORMAT
    default = Path(args.run).with_suffix("") if not Path(args.run).is_dir() else Path(args.run) / "export"
    out = Path(args.out) if args.out else default / f"gaussians.{args.format}"
    _writable(out)
    written: list[Path] = []
    if is_mixture:
        from ..moe import load_mixture

        mixture, _ = load_mixture(ckpt)  # reads the file again: builds and checks the whole mixture
        if args.prune is not None:
            _prune(mixture, args, payload)
        # One file (or sequence) per expert, in a folder: a per-pixel blend has no single-PLY form.
        folder = out.with_suffix("") if out.suffix else out
        for name, expert in zip(mixture.names, mixture.experts):
            written += export_gaussians(expert, times, folder / f"{name.replace('#', '_')}.{args.format}", args.format)
        print("moegs export: a mixture blends its experts per pixel, which no single PLY can hold; "
              f"wrote each expert's Gaussians to {folder}")
    else:
        if args.prune is not None:
            from ..errors import ConfigError

            raise ConfigError("--prune needs a mixture checkpoint (gate-aware pruning uses its router)")
        written += export_gaussians(expert_from_payload(payload, ckpt), times, out, args.format)
    for p in written:
        print(p)
    return 0


def _prune(mixture, args: argparse.Namespace, payload: dict) -> None:
    """Gate-aware pruning before export, on the training views of the mixture's scene."""
    from ..data import load_scene
    from ..errors import ConfigError
    from ..moe.checkpoint import mixture_scene_path
    from ..moe.prune import gate_prune

    data = args.data or mixture_scene_path(payload)
    if not data:
        raise ConfigError("--prune needs the scene: give it with --data")
    from ..data import DataConfig
    from ..train.config import from_dict

    scene = load_scene(data, from_dict(DataConfig, payload["config"].get("data") or {}))
    views = scene.train_views[:: max(1, len(scene.train_views) // 40)]
    report = gate_prune(mixture, views, args.prune)
    print("moegs export: gate-aware pruning kept " + ", ".join(
        f"{n} {a} of {b}" for n, a, b in zip(mixture.names, report["after"], report["before"])) + " Gaussians")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``export`` on the ``moegs`` sub-command parsers ``sub``."""
    from ..export import FORMATS

    p = sub.add_parser("export", help="write an expert's Gaussians at a time as a 3DGS PLY or .splat")
    p.add_argument("run", help="run directory or checkpoint (an expert, a distilled student or a mixture)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--time", type=float, default=0.0, help="normalised time in [0, 1] (default 0)")
    when.add_argument("--times", metavar="A:B:N", help="a numbered sequence of N times from A to B")
    p.add_argument("--out", help="output file (default: <run>/export/gaussians.<format>); a mixture writes a "
                                 "folder with one file per expert")
    p.add_argument("--format", choices=FORMATS, default="ply", help="ply (3DGS layout, default) or splat")
    p.add_argument("--prune", type=float, metavar="SHARE",
                   help="mixture only: gate-aware pruning before exporting, keeping the fewest Gaussians that carry "
                        "this share of the blend's contributions (e.g. 0.97)")
    p.add_argument("--data", help="scene folder for --prune (default: the one the experts were trained on)")
    p.set_defaults(func=cmd_export)
    return p
