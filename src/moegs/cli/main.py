"""The ``moegs`` command line: a thin layer over the library.

Every user error (bad data, bad flag, corrupt checkpoint) ends in one line
``moegs: error: <file>: <problem>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # two shared cores: never spin-wait

__all__ = ["main", "build_parser"]


def _data_config(args: argparse.Namespace):
    from ..data import DataConfig

    cfg = DataConfig()
    if getattr(args, "format", None):
        cfg.format = args.format
    if getattr(args, "downscale", None) is not None:
        cfg.downscale = args.downscale
    if getattr(args, "frame_step", None) is not None:
        cfg.frame_step = args.frame_step
    if getattr(args, "max_frames", None) is not None:
        cfg.max_frames = args.max_frames
    if getattr(args, "points", None) is not None:
        cfg.points = args.points
    if getattr(args, "near", None) is not None:
        cfg.near = args.near
    return cfg


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    from ..data import FORMATS

    p.add_argument("--format", choices=sorted(FORMATS), help="force the dataset format (default: detected)")
    p.add_argument("--downscale", type=float, help="image downscale factor (default: the format's own)")
    p.add_argument("--frame-step", type=int, help="keep every k-th frame")
    p.add_argument("--max-frames", type=int, help="keep at most this many frames")
    p.add_argument("--points", help="initial points: auto (the folder's, else SfM), sfm, random, or a .ply/.npz/COLMAP model")
    p.add_argument("--near", type=float, help="near plane of every camera, scene units (default: the format's own)")


def _set_given(cfg, args: argparse.Namespace, fields: dict[str, str]) -> None:
    """Copy the flags the user gave (``flag attribute -> config field``) onto ``cfg``; defaults stay the config's."""
    for flag, name in fields.items():
        v = getattr(args, flag, None)
        if v is not None:
            setattr(cfg, name, v)


def _add_run_flags(p: argparse.ArgumentParser, what: str) -> None:
    """Flags every training command shares; their defaults are the config's."""
    from ..render import BACKENDS
    from ..train.trainer import DEVICES

    p.add_argument("--out", help=f"run directory (default: {what})")
    p.add_argument("--backend", choices=BACKENDS, help="rasterizer backend (default: auto)")
    p.add_argument("--device", choices=DEVICES, help="device (default: auto, cuda when present)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_checkpoint_flags(p: argparse.ArgumentParser, out_help: str) -> None:
    """Flags of the commands that read a trained checkpoint and its scene."""
    from ..render import BACKENDS

    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--data", help="scene folder (default: the one it was trained on)")
    p.add_argument("--out", help=out_help)
    p.add_argument("--backend", choices=BACKENDS, help="rasterizer backend (default: auto)")
    _add_data_flags(p)


def _positive(kind):
    def parse(s: str):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v

    return parse


def cmd_train(args: argparse.Namespace) -> int:
    from ..experts import expert_config
    from ..train import TrainConfig, apply_overrides
    from ..train.run import train_expert

    cfg = TrainConfig(data=_data_config(args))
    if args.expert is not None:
        cfg.expert = expert_config(args.expert)
    _set_given(cfg, args, {"steps": "steps", "backend": "backend", "device": "device", "seed": "seed"})
    apply_overrides(cfg, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.data).name}-{cfg.expert.name}"
    summary = train_expert(args.data, cfg, out, resume=args.resume, progress=not args.quiet)
    _print_summary(summary, out)
    return 0


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"moegs run: {out}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console(stderr=False).print(t)


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import io
    from ..eval import evaluate_expert

    ckpt, expert, scene = _load_for_eval(args)
    out = Path(args.out) if args.out else ckpt.parent.parent / "eval"
    res = evaluate_expert(expert, scene, backend=args.backend or "auto", out_dir=out / "renders")
    io.write_json(out / "eval.json", res)
    _print_summary({k: v for k, v in res.items() if k != "per_view"}, out)
    return 0


def _data_config_from(payload: dict, args: argparse.Namespace):
    from ..data import DataConfig
    from ..train.config import from_dict

    d = (payload.get("train_config") or {}).get("data")
    cfg = from_dict(DataConfig, d) if d else DataConfig()
    over = _data_config(args)
    for k in ("format", "downscale", "frame_step", "max_frames", "points", "near"):
        v = getattr(args, k, None)
        if v is not None:
            setattr(cfg, k, getattr(over, k))
    return cfg


def _load_for_eval(args: argparse.Namespace):
    from ..data import load_scene
    from ..train.checkpoint import load_expert, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    expert, payload = load_expert(ckpt)
    data = args.data or payload["scene_meta"].get("path")
    if not data:
        from ..errors import ConfigError

        raise ConfigError(f"{ckpt}: give the scene folder with --data")
    return ckpt, expert, load_scene(data, _data_config_from(payload, args))


def cmd_render(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..eval.video import render_video, sweep_times
    from ..experts import render_expert

    ckpt, expert, scene = _load_for_eval(args)
    views = scene.test_views or scene.train_views
    cams = sorted({v.camera_id for v in views})
    if not 0 <= args.camera < len(cams):
        raise ConfigError(f"--camera {args.camera}: the scene has {len(cams)} test camera(s)")
    view = next(v for v in views if v.camera_id == cams[args.camera])

    def render(cam):
        return render_expert(expert, cam, background=scene.background, backend=args.backend or "auto").color

    out = Path(args.out) if args.out else ckpt.parent.parent / "renders" / f"camera{cams[args.camera]:02d}.mp4"
    render_video(render, view.camera, sweep_times(scene.times, args.frames), out, args.fps)
    print(out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import print_inspection

    facts = print_inspection(args.path, _data_config(args))
    if facts.get("error"):
        print(f"moegs: error: {facts['error']}", file=sys.stderr)
        return 2
    return 0


def cmd_train_moe(args: argparse.Namespace) -> int:
    from ..moe import MoEConfig, train_mixture
    from ..train import apply_overrides
    from ..train.checkpoint import load_checkpoint
    from ..train.config import from_dict
    from ..experts import EXPERTS

    if args.data is None:  # `--experts a.pt b.pt DATA`: the option swallowed the scene folder
        if len(args.experts) < 2:
            from ..errors import ConfigError

            raise ConfigError("train-moe needs a scene folder after the expert checkpoints")
        args.data = args.experts.pop()
    cfg = MoEConfig(data=_data_config(args))
    _set_given(cfg, args, {"router": "router", "steps": "steps", "joint_steps": "joint_steps", "backend": "backend",
                           "device": "device", "seed": "seed"})
    # The experts' own configs, so that ``--set experts.<name>.<field>=v`` is checked against them.
    for ckpt in args.experts:
        payload = load_checkpoint(ckpt)
        cfg.experts[payload["expert"]] = from_dict(EXPERTS[payload["expert"]][0], payload["expert_config"])
    apply_overrides(cfg, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.data).name}-moe-{cfg.router}"
    summary = train_mixture(args.experts, args.data, cfg, out, resume=args.resume, progress=not args.quiet)
    _print_summary({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, out)
    return 0


def _pipeline_config(args: argparse.Namespace):
    from ..pipeline import PipelineConfig
    from ..train import apply_overrides

    cfg = PipelineConfig(data=_data_config(args))
    if args.experts:
        cfg.with_experts(args.experts)
    _set_given(cfg, args, {"expert_steps": "expert_steps", "backend": "backend", "seed": "seed"})
    _set_given(cfg.moe, args, {"moe_steps": "steps", "device": "device"})
    apply_overrides(cfg, args.set or [])
    return cfg


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline

    cfg = _pipeline_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.data).name}-pipeline"
    report = run_pipeline(args.data, cfg, out, progress=not args.quiet)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}  ({report['pipeline_time_s']} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..data.synthetic import ensure_default_scene

    print("moegs demo: generating the default scene (cached after the first run)…", file=sys.stderr)
    args.data = str(ensure_default_scene())
    if args.downscale is None:
        args.downscale = 1.0  # the generated scene is already small
    return cmd_pipeline(args)


def _add_pipeline_flags(p: argparse.ArgumentParser, experts: list[str]) -> None:
    p.add_argument("--experts", nargs="+", choices=experts, help="experts of the mixture (2 to 5)")
    p.add_argument("--expert-steps", type=_positive(int), help="training steps of each expert")
    p.add_argument("--moe-steps", type=_positive(int), help="router training steps")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a pipeline field, e.g. moe.router=gates, max_gaussians=30000 or "
                        "experts.spacetime.gaussians.sh_degree=2")
    _add_run_flags(p, "runs/<scene>-pipeline")
    _add_data_flags(p)


def build_parser() -> argparse.ArgumentParser:
    from ..experts import EXPERTS
    from ..moe.router import ROUTERS

    p = argparse.ArgumentParser(prog="moegs", description="Dynamic Gaussian splatting with a mixture of experts.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one expert on a scene")
    t.add_argument("data", help="scene folder (any supported format)")
    t.add_argument("--expert", choices=list(EXPERTS), help="which expert (default: static)")
    t.add_argument("--steps", type=_positive(int), help="training steps")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field, e.g. strategy.grow_grad2d=3e-4 or expert.gaussians.sh_degree=1")
    _add_run_flags(t, "runs/<scene>-<expert>")
    _add_data_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the test views")
    _add_checkpoint_flags(e, "output folder (default: <run>/eval)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("render", help="render a video of a test camera over time")
    _add_checkpoint_flags(r, "output .mp4 (default: <run>/renders/camera<i>.mp4)")
    r.add_argument("--camera", type=int, default=0, help="index among the test cameras")
    r.add_argument("--frames", type=_positive(int), help="number of frames (default: the scene's times)")
    r.add_argument("--fps", type=_positive(float), default=15.0)
    r.set_defaults(func=cmd_render)

    m = sub.add_parser("train-moe", help="train the mixture router over trained experts")
    m.add_argument("data", nargs="?", help="scene folder (may also follow the checkpoints)")
    m.add_argument("--experts", nargs="+", required=True, metavar="CKPT", help="2 to 5 expert checkpoints")
    m.add_argument("--router", choices=ROUTERS, help="router variant (default: full)")
    m.add_argument("--steps", type=_positive(int), help="stage-2 steps (experts frozen)")
    m.add_argument("--joint-steps", type=int, help="stage-3 steps (joint fine-tuning; 0 skips it)")
    m.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    m.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a MoEConfig field, e.g. temperature=0.5 or experts.spacetime.gaussians.lr.means=1e-5")
    _add_run_flags(m, "runs/<scene>-moe-<router>")
    _add_data_flags(m)
    m.set_defaults(func=cmd_train_moe)

    pl = sub.add_parser("pipeline", help="experts, then the mixture, then a report, on one scene")
    pl.add_argument("data", help="scene folder")
    _add_pipeline_flags(pl, list(EXPERTS))
    pl.set_defaults(func=cmd_pipeline)

    d = sub.add_parser("demo", help="the whole pipeline on a generated heterogeneous dynamic scene")
    _add_pipeline_flags(d, list(EXPERTS))
    d.set_defaults(func=cmd_demo, out="runs/demo")

    i = sub.add_parser("inspect", help="detect a scene's format and describe what it holds")
    i.add_argument("path")
    _add_data_flags(i)
    i.set_defaults(func=cmd_inspect)

    from .export import add_parser as add_export
    from .prepare import add_parser as add_prepare
    from .prune import add_parser as add_prune
    from .view import add_parser as add_view

    add_prepare(sub)
    add_prune(sub)
    add_view(sub)
    add_export(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import MoegsError

    from ..runtime import tune_allocator

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except MoegsError as e:
        print(f"moegs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moegs: interrupted (the last checkpoint is kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
