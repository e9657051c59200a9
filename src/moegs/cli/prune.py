"""``moegs prune MIXTURE [--keep SHARE] [--steps N] --out DIR``: a gate-pruned, fine-tuned copy of a
trained mixture, as a mixture run of its own (thin layer over :func:`moegs.moe.prune.prune_and_finetune`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "cmd_prune"]


def cmd_prune(args: argparse.Namespace) -> int:
    from .. import io
    from ..data import load_scene
    from ..errors import ConfigError
    from ..moe import MoEConfig, evaluate_mixture, load_mixture, save_mixture
    from ..moe.checkpoint import mixture_scene_path
    from ..moe.prune import prune_and_finetune
    from ..train import apply_overrides
    from ..train.checkpoint import resolve_checkpoint
    from ..train.config import from_dict, to_dict
    from .main import _set_given

    ckpt = resolve_checkpoint(args.mixture)
    out = Path(args.out)
    if (out / "checkpoints").resolve() == ckpt.parent.resolve():
        raise ConfigError(f"{out}: that is the mixture's own run; give the pruned copy another folder")
    mixture, payload = load_mixture(ckpt)
    cfg = from_dict(MoEConfig, payload["config"])
    _set_given(cfg.prune, args, {"keep": "keep", "steps": "steps", "views": "views", "lr_scale": "lr_scale"})
    apply_overrides(cfg, args.set or [])
    cfg.check()
    data = args.data or mixture_scene_path(payload)
    if not data:
        raise ConfigError(f"{ckpt}: the scene it was trained on is unknown; give it with --data")
    scene = load_scene(data, cfg.data)
    report = prune_and_finetune(mixture, scene, cfg, payload["experts"], progress=not args.quiet)
    save_mixture(out / "checkpoints" / "last.pt", mixture, cfg, payload["experts"])
    res = evaluate_mixture(mixture, scene, use_lpips=False)
    summary = {"source": str(ckpt), **report, "test_psnr": res["psnr"], "test_ssim": res["ssim"],
               "test_fps": res.get("render_fps"), "config": to_dict(cfg.prune)}
    io.write_json(out / "prune.json", summary)
    print(f"moegs prune: kept {sum(report['after'])} of {sum(report['before'])} Gaussians ("
          + ", ".join(f"{n} {a}" for n, a in zip(mixture.names, report["after"]))
          + f"), fine-tuned {report['steps']} steps in {report['finetune_s']} s; test PSNR {res['psnr']:.2f} dB; "
          f"wrote {out / 'checkpoints' / 'last.pt'}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``prune`` on the ``moegs`` sub-command parsers ``sub``."""
    p = sub.add_parser("prune", help="gate-aware pruning of a trained mixture, then joint fine-tuning")
    p.add_argument("mixture", help="mixture run directory or checkpoint")
    p.add_argument("--out", required=True, help="run directory of the pruned mixture (checkpoints/last.pt, prune.json)")
    p.add_argument("--keep", type=float, metavar="SHARE",
                   help="share of the blend's summed contributions the kept Gaussians carry, the fewest with the "
                        "largest contributions staying (default 0.8; 1 keeps all)")
    p.add_argument("--steps", type=int, help="joint fine-tuning steps after pruning (default 400; 0: prune only)")
    p.add_argument("--views", type=int, help="training views whose contributions decide (default 24)")
    p.add_argument("--lr-scale", type=float, help="the experts' learning rates are scaled by this (default 0.3)")
    p.add_argument("--data", help="scene folder (default: the one the experts were trained on)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of the mixture's config, e.g. prune.keep=0.9 or ssim_lambda=0.2")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)
    return p
