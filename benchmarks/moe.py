"""Mixture-of-experts benchmark: single experts vs the mixture, the router ablation, render cost,
gate-aware pruning and distillation, on one scene.

    python benchmarks/moe.py --scene DATA --experts a.pt b.pt [c.pt ...]
    python benchmarks/moe.py --train static hexplane embedding --expert-steps 2000   # generated scene
    python benchmarks/moe.py --scene DATA --mixture mixture/checkpoints/last.pt      # efficiency table only
    python benchmarks/moe.py --scene demo --experts runs/demo/experts/*/checkpoints/last.pt --router gates

Without ``--scene`` a small generated heterogeneous scene (``moegs.data.synthetic``) is written
into the output folder. Without ``--experts`` the experts named by ``--train`` are trained first,
each with the same budget. Everything is written under ``--out`` (``results.json``, figures, videos).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from moegs.data import load_scene  # noqa: E402
from moegs.moe import MoEConfig, evaluate_mixture, load_mixture, train_mixture  # noqa: E402
from moegs.train.config import from_dict  # noqa: E402
from moegs.moe.ablation import DESCRIPTIONS, format_table, run_ablation  # noqa: E402
from moegs.moe.distill import distill, finetune  # noqa: E402
from moegs.moe.efficiency import efficiency_table, format_efficiency_table  # noqa: E402
from moegs.moe.config import PruneConfig  # noqa: E402
from moegs.moe.prune import prune_and_finetune  # noqa: E402
from moegs.moe.viz import render_weight_video, save_weight_figure, usage_histogram  # noqa: E402
from moegs.train import TrainConfig  # noqa: E402
from moegs.train.run import train_expert  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", type=Path, help="scene folder, or demo: the scene of `moegs demo` (default: generate a "
                                              "small synthetic scene)")
    p.add_argument("--experts", type=Path, nargs="+", help="expert checkpoints (2-5)")
    p.add_argument("--mixture", type=Path, help="a trained mixture checkpoint: write its efficiency table only")
    p.add_argument("--train", nargs="+", default=["static", "hexplane", "embedding"],
                   help="experts to train when --experts is not given")
    p.add_argument("--expert-steps", type=int, default=1500, help="training steps of each expert")
    p.add_argument("--moe-steps", type=int, default=600, help="stage-2 steps of every mixture")
    p.add_argument("--joint-steps", type=int, default=0, help="stage-3 steps of the main mixture")
    p.add_argument("--router", default="full", help="router of the main mixture")
    p.add_argument("--gate", default="linear", help="gate of the main mixture: linear or mlp")
    p.add_argument("--downscale", type=float, default=None, help="image downscale of the scene")
    p.add_argument("--prune-keep", type=float, default=PruneConfig.keep,
                   help="share of the blend's summed contributions the kept Gaussians carry (1: keep all)")
    p.add_argument("--prune-steps", type=int, default=PruneConfig.steps,
                   help="joint fine-tuning steps after pruning (0: prune only; then keep about 0.97)")
    p.add_argument("--student", default=None, help="expert fine-tuned from the mixture (default: the best one)")
    p.add_argument("--distill-steps", type=int, default=None, help="fine-tuning steps (default: --expert-steps / 3)")
    p.add_argument("--no-ablation", action="store_true", help="skip the router ablation")
    p.add_argument("--synthetic-size", type=int, nargs=2, default=(96, 72), metavar=("W", "H"))
    p.add_argument("--synthetic-frames", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("runs/bench_moe"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    if str(args.scene) == "demo":  # the scene of `moegs demo` (generated and cached on first use)
        from moegs.data.synthetic import ensure_default_scene

        args.scene = ensure_default_scene()
        if args.downscale is None:
            args.downscale = 1.0
    if args.scene is None:
        from moegs.data.synthetic import SyntheticConfig, generate_scene

        w, h = args.synthetic_size
        args.scene = generate_scene(out / "scene", SyntheticConfig(width=w, height=h,
                                                                   num_frames=args.synthetic_frames))
        if args.downscale is None:
            args.downscale = 1.0  # generated at the size asked for
    moe_cfg = MoEConfig(router=args.router, gate=args.gate, steps=args.moe_steps, joint_steps=args.joint_steps,
                        prune=PruneConfig(keep=args.prune_keep, steps=args.prune_steps))
    moe_cfg.data.downscale = args.downscale
    scene = load_scene(args.scene, moe_cfg.data)
    print(f"scene {scene.name}: {len(scene.train_views)} train / {len(scene.test_views)} test views, "
          f"{scene.resolution()[0]}x{scene.resolution()[1]}", flush=True)

    if args.mixture is not None:
        mixture, payload = load_mixture(args.mixture)
        cfg = from_dict(MoEConfig, payload["config"])
        cfg.prune = moe_cfg.prune
        eff = efficiency_table(mixture.eval(), scene,
                               prune=lambda m: prune_and_finetune(m, scene, cfg, payload["experts"]))
        print("\n== efficiency (test views, same run) ==")
        print(format_efficiency_table(eff))
        (out / "results.json").write_text(json.dumps({"efficiency": eff}, indent=2))
        return {"efficiency": eff}

    # ------------------------------------------------------------- experts
    ckpts = args.experts
    if ckpts is None:
        ckpts = []
        for name in args.train:
            cfg = TrainConfig(expert=name, steps=args.expert_steps, data=moe_cfg.data, eval_at_end=False)
            run = out / "experts" / name
            print(f"training expert {name} ({args.expert_steps} steps)", flush=True)
            s = train_expert(scene, cfg, run, resume=True, progress=False)
            print(f"  {name}: {s['train_time_s']} s", flush=True)
            ckpts.append(run / "checkpoints" / "last.pt")

    # ------------------------------------------------------ main mixture
    print(f"training the {args.router} mixture ({args.moe_steps} + {args.joint_steps} steps)", flush=True)
    summary = train_mixture(ckpts, scene, moe_cfg, out / "mixture", resume=True, progress=False)
    evals = json.loads((out / "mixture" / "eval.json").read_text())
    rows = [{"model": n, "test_psnr": evals[n]["psnr"], "test_ssim": evals[n]["ssim"], "test_lpips": evals[n]["lpips"],
             "gaussians": evals[n]["num_gaussians"]} for n in summary["experts"]]
    rows.append({"model": f"mixture ({args.router})", "test_psnr": evals["mixture"]["psnr"],
                 "test_ssim": evals["mixture"]["ssim"], "test_lpips": evals["mixture"]["lpips"],
                 "gaussians": sum(evals["mixture"]["num_gaussians"])})
    print("\n== experts vs mixture (test views) ==")
    print(format_table(rows))
    print(f"mixture - best expert ({summary['best_expert']}): {summary['gain_over_best_db']:+.3f} dB; "
          f"usage {['%.2f' % u for u in summary['test_usage']]}")
    results["experts_vs_mixture"] = rows
    results["gain_over_best_db"] = summary["gain_over_best_db"]

    mixture, payload = load_mixture(out / "mixture" / "checkpoints" / "last.pt")
    mixture.eval()
    names = mixture.names

    # ------------------------------------------------------------ figures
    figs = out / "figures"
    with torch.no_grad():
        for i, v in enumerate(scene.test_views[:3]):
            save_weight_figure(mixture.render(v), names, figs / f"weights_{i:02d}.png", gt=scene.image(v),
                               title=f"{v.camera.name} t={v.time:.2f}")
    render_weight_video(mixture, scene.test_views[0].camera, scene.times, figs / "weights.mp4")
    results["usage"] = usage_histogram(mixture, scene, figs / "usage.png")["usage"]

    # ---------------------------------------------------------- ablation
    if not args.no_ablation:
        print("\nrunning the router ablation", flush=True)
        abl_cfg = MoEConfig(gate=args.gate, steps=args.moe_steps, data=moe_cfg.data)
        routers = tuple(r for r in DESCRIPTIONS if not (r == args.router and args.joint_steps == 0))
        abl = run_ablation(ckpts, scene, abl_cfg, out / "ablation", routers)
        if len(routers) < len(DESCRIPTIONS):  # the main mixture is the ablation's row for its router
            abl.append({"router": args.router, "description": DESCRIPTIONS[args.router],
                        "test_psnr": summary["test_psnr"], "test_ssim": summary["test_ssim"],
                        "test_lpips": summary["test_lpips"], "train_time_s": summary["train_time_s"],
                        "usage": summary["test_usage"]})
        print("\n== router ablation (test views) ==")
        print(format_table(abl, ["router", "description", "test_psnr", "test_ssim", "test_lpips", "train_time_s",
                                 "usage"]))
        results["ablation"] = abl

    # ------------------------------------------------- efficiency table
    eff = efficiency_table(mixture, scene, prune=lambda m: prune_and_finetune(m, scene, moe_cfg, payload["experts"]))
    print("\n== efficiency (test views, same run) ==")
    print(format_efficiency_table(eff))
    results["efficiency"] = eff
    mixture_fps = next(r["fps"] for r in eff if r["model"] == "mixture single-pass")

    # ------------------------------------------------------------ pruning
    # Pruned then fine-tuned, against the same fine-tuning of the unpruned mixture (keep 1 removes
    # nothing), so that what the fine-tuning alone adds is visible.
    before = evals["mixture"]["psnr"]
    prune_rows = []
    for label, keep in (("pruned + fine-tuned", args.prune_keep), ("fine-tuned, not pruned", 1.0)):
        m = copy.deepcopy(mixture)
        cfg = copy.deepcopy(moe_cfg)
        cfg.prune.keep = keep
        report = prune_and_finetune(m, scene, cfg, payload["experts"])
        m.eval()
        after = evaluate_mixture(m, scene, use_lpips=False)["psnr"]
        prune_rows.append({"model": label, "keep": keep, "threshold_px": report["threshold"], "steps": args.prune_steps,
                           "gaussians": sum(report["after"]), "test_psnr": after, "change_db": after - before,
                           "finetune_s": report["finetune_s"]})
    print(f"\n== gate-aware pruning (test PSNR of the mixture as trained: {before:.3f} dB) ==")
    print(format_table(prune_rows))
    results["pruning"] = prune_rows

    # -------------------------------------------------------- distillation
    student = args.student or summary["best_expert"]
    k = names.index(student)
    steps = args.distill_steps or args.expert_steps // 3
    tcfg = TrainConfig(eval_at_end=False, data=moe_cfg.data)
    print(f"\ndistilling the mixture into its {student} expert ({steps} fine-tuning steps)", flush=True)
    _, dres = distill(mixture, k, scene, steps, tcfg)
    _, fres = finetune(mixture.experts[k], scene, steps, tcfg)
    drow = [{"model": f"{student} fine-tuned with the router-masked loss", "test_psnr": dres["psnr"],
             "test_ssim": dres["ssim"], "gaussians": dres["num_gaussians"], "fps": dres["render_fps"]},
            {"model": f"{student} fine-tuned on the images alone", "test_psnr": fres["psnr"], "test_ssim": fres["ssim"],
             "gaussians": fres["num_gaussians"], "fps": fres["render_fps"]},
            {"model": f"{student} as trained", "test_psnr": evals[student]["psnr"], "test_ssim": evals[student]["ssim"],
             "gaussians": evals[student]["num_gaussians"], "fps": evals[student]["render_fps"]},
            {"model": "mixture (teacher)", "test_psnr": evals["mixture"]["psnr"], "test_ssim": evals["mixture"]["ssim"],
             "gaussians": sum(evals["mixture"]["num_gaussians"]), "fps": mixture_fps}]
    print("\n== distillation (test views) ==")
    print(format_table(drow))
    results["distillation"] = drow

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults, figures and videos in {out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
