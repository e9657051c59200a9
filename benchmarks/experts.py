"""Expert benchmark: train and evaluate registered experts on one scene with one budget, print one table.

Every expert is trained from scratch with the same ``TrainConfig`` (steps, resolution, seed,
densification) and evaluated on the scene's test views: PSNR, SSIM, LPIPS (or why it was
skipped), render FPS, number of Gaussians, model size on disk and training time (the
optimisation loop only, excluding loading and evaluation).

    python benchmarks/experts.py SCENE [--steps 3000] [--downscale 8] [--experts deformable,spacetime]
        [--set KEY=VALUE ...] [--points auto|sfm|random|FILE] [--out DIR] [--json FILE]

``--set`` takes ``TrainConfig`` overrides (``strategy.refine_every=50``); ``experts.EXPERT.field=value``
(``experts.deformable.warmup_steps=300``) sets a field of that expert only, as ``moegs pipeline`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.experts import EXPERTS  # noqa: E402
from moegs.train import TrainConfig, apply_overrides  # noqa: E402
from moegs.train.config import to_dict  # noqa: E402
from moegs.train.run import train_expert  # noqa: E402

COLUMNS = ("expert", "PSNR", "SSIM", "LPIPS", "FPS", "#Gauss", "MB", "train s")


def run_one(scene, name: str, args: argparse.Namespace, out: Path) -> dict:
    """Train ``name`` on ``scene`` with the shared budget; returns its row."""
    cfg = TrainConfig(expert=name, steps=args.steps, backend=args.backend, seed=args.seed,
                      checkpoint_every=10**9, log_every=max(1, args.steps // 20), data=scene_data(args))
    # ``experts.<name>.<field>=v`` sets a field of that expert (as ``moegs pipeline`` does); the rest
    # (``strategy.*``, ``steps``, ...) applies to every expert's run.
    overrides = []
    for item in args.set:
        parts = item.split("=", 1)[0].split(".")
        if parts[0] == "experts" and len(parts) > 2:
            if parts[1] not in EXPERTS:
                raise SystemExit(f"experts.py: error: unknown expert {parts[1]!r} in {item!r}")
            if parts[1] == name:
                overrides.append("expert." + item.split(".", 2)[2])
        else:
            overrides.append(item)
    apply_overrides(cfg, overrides)
    s = train_expert(scene, cfg, out / name, progress=not args.quiet)
    return {"expert": name, "psnr": s["test_psnr"], "ssim": s["test_ssim"], "lpips": s["test_lpips"],
            "lpips_note": s.get("test_lpips_note"), "fps": s["test_render_fps"],
            "num_gaussians": s["test_num_gaussians"], "size_mb": s["test_size_mb"], "train_s": s["train_time_s"],
            "config": to_dict(cfg.expert)}


def scene_data(args) -> DataConfig:
    """How the scene is read: ``--downscale``, ``--points`` and the ``data.*`` overrides of ``--set``."""
    cfg = TrainConfig(data=DataConfig(downscale=args.downscale, points=args.points))
    apply_overrides(cfg, [item for item in args.set if item.startswith("data.")])
    return cfg.data


def format_table(rows: list[dict], header: str) -> str:
    lines = [header, " | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for r in rows:
        lp = f"{r['lpips']:.4f}" if r["lpips"] is not None else "skipped"
        lines.append(" | ".join((r["expert"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", lp, f"{r['fps']:.1f}",
                                 str(r["num_gaussians"]), f"{r['size_mb']:.2f}", f"{r['train_s']:.0f}")))
    notes = {r["lpips_note"] for r in rows if r["lpips"] is None and r.get("lpips_note")}
    lines += [f"LPIPS: {n}" for n in sorted(notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", help="scene folder (any supported format)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per expert")
    p.add_argument("--downscale", type=float, default=None, help="image downscale (default: the format's own)")
    p.add_argument("--experts", default=",".join(EXPERTS),
                   help="comma-separated expert names (default: every registered expert)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "torch", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", default="auto",
                   help="initial points: auto, sfm, random or a point file (DataConfig.points)")
    p.add_argument("--out", help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.experts.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERTS]
    if unknown:
        p.error(f"unknown expert(s) {', '.join(unknown)}; choose from {', '.join(EXPERTS)}")
    scene = load_scene(args.scene, scene_data(args))
    w, h = scene.resolution()
    with tempfile.TemporaryDirectory(prefix="moegs-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        rows = [run_one(scene, n, args, out) for n in names]
    header = (f"{scene.name}: {w}x{h}, {args.steps} steps, {len(scene.train_views)} train / "
              f"{len(scene.test_views)} test views, {len(scene.points)} initial points "
              f"({scene.info.get('initial_points') or scene.info.get('points', '?')})")
    print(format_table(rows, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
