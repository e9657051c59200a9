"""Router study: which router and which regularisers close the gap to the per-pixel oracle on held-out cameras.

    python benchmarks/router_study.py --pipeline runs/demo                       # every variant, seed 0
    python benchmarks/router_study.py --pipeline runs/demo --variants full published --seeds 0 1 2
    python benchmarks/router_study.py --scene DATA --experts a.pt b.pt c.pt --downscale 8
    python benchmarks/router_study.py --pipeline runs/demo --variants full --joint-steps 300 --distill-steps 400

The experts are trained once (``moegs demo --out runs/demo`` or ``moegs pipeline``, whose
``experts/<name>/checkpoints/last.pt`` ``--pipeline`` reads; or ``--experts``); every variant trains a
fresh router over the same frozen experts with the pipeline's mixture budget (``MoEConfig`` with
800 steps) and only its own fields changed. Each row: test PSNR/SSIM, gain over the best expert on
the test views, the per-pixel oracle's PSNR (:func:`moegs.moe.evaluate.oracle_headroom`) and the
oracles choosing one expert per 4x4 and 16x16 tile or blending the experts best per tile, and the
fraction of the oracle's headroom realised on the test views and on training views. With several
seeds, the mean and spread (min..max) of each variant's gain come last. ``results.json`` under
``--out`` holds every row.

``--joint-steps J`` measures stage 3 fairly on the first variant and seed: its stage-2 run continued
with ``J`` joint steps, against each expert fine-tuned alone for the same ``J`` steps at the same
learning-rate scale. ``--distill-steps N`` fine-tunes the mixture's best expert for ``N`` steps with
the router-masked loss (:func:`moegs.moe.distill.distill`) and, for the same steps, on the ground truth
alone (:func:`moegs.moe.distill.finetune`). The teacher is the first variant's router over the experts as
trained, or with ``--teacher pipeline`` the ``--pipeline`` folder's own mixture (after its joint steps; its
experts are then the ones fine-tuned).

``--router-cameras cam02 cam06`` tests a router trained on cameras its experts never saw: the
given experts (each with its checkpoint's training config and budget) are trained again without those
cameras (Panoptic's cameras by number: ``--router-cameras 5 20``), into
``--out``/``experts_without_router_cameras``, and every variant's router is trained on the held-back
cameras' views only. Each row then also gives the gain over the best of the given experts, which saw
every training camera (the fair baseline: what a user gets without the mixture). A router without
Gaussian gates (``pixel_rgb``) is also used over those given experts (``stacked_gain_db``): stacking,
a router trained on renders of cameras its experts did not see, then blending experts that saw them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from moegs.data import Scene, load_scene  # noqa: E402
from moegs.eval import evaluate_renderer  # noqa: E402
from moegs.experts import render_expert  # noqa: E402
from moegs.train.checkpoint import load_expert  # noqa: E402
from moegs.train.run import train_expert  # noqa: E402
from moegs.moe import MoEConfig, load_mixture, train_mixture  # noqa: E402
from moegs.moe.ablation import format_table  # noqa: E402
from moegs.moe.build import spaced_views  # noqa: E402
from moegs.moe.config import published_config  # noqa: E402
from moegs.moe.distill import distill, finetune  # noqa: E402
from moegs.train import TrainConfig  # noqa: E402
from moegs.train.config import from_dict  # noqa: E402
from moegs.moe.evaluate import ORACLE_BLOCKS, oracle_headroom  # noqa: E402

# name -> (what it tests, MoEConfig fields relative to the pipeline's mixture config)
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("joint decoder on all gate maps (gates + dir + time)", {}),
    "gates": ("Gaussian gates, no decoder", {"router": "gates"}),
    "pixel_rgb": ("decoder on rendered RGB, no gates", {"router": "pixel_rgb"}),
    "full_noview": ("joint decoder without ray inputs", {"router_view": "none"}),
    "full_tv": ("joint decoder + TV 0.05 on the weights", {"tv_weight": 0.05}),
    "full_dropout": ("joint decoder, view dropout 0.5", {"view_dropout": 0.5}),
    "full_jitter": ("joint decoder, ray jitter 0.05", {"ray_jitter": 0.05}),
    "published_paper": ("published router, the authors' settings", {"paper": True}),
    "published": ("published router (shared decoder), this repo's lrs, tau 0.1",
                  {"router": "published", "temperature": 0.1}),
    "published_noview": ("published router without ray inputs", {"router": "published", "temperature": 0.1,
                                                                 "router_view": "none"}),
    "published_dropout": ("published router, view dropout 0.5", {"router": "published", "temperature": 0.1,
                                                                 "view_dropout": 0.5}),
    "published_tv": ("published router + TV 0.05 on the weights", {"router": "published", "temperature": 0.1,
                                                                   "tv_weight": 0.05}),
    "published_entropy": ("published router + entropy 0.01", {"router": "published", "temperature": 0.1,
                                                              "entropy_weight": 0.01}),
}


def variant_config(base: MoEConfig, name: str, seed: int) -> MoEConfig:
    """``base`` with variant ``name``'s fields and ``seed``; stage 3 off, experts not re-evaluated."""
    fields = dict(VARIANTS[name][1])
    if fields.pop("paper", False):
        paper = published_config()
        fields.update({f.name: getattr(paper, f.name) for f in dataclasses.fields(MoEConfig)
                       if getattr(paper, f.name) != getattr(MoEConfig(), f.name)})
    return dataclasses.replace(base, **fields, seed=seed, joint_steps=0, eval_experts=False)


def expert_checkpoints(args: argparse.Namespace) -> list[Path]:
    if args.experts:
        return list(args.experts)
    ckpts = sorted((args.pipeline / "experts").glob("*/checkpoints/last.pt"))
    if len(ckpts) < 2:
        sys.exit(f"router_study: {args.pipeline}: no trained experts under experts/*/checkpoints/last.pt")
    return ckpts


def split_router_cameras(scene: Scene, cameras: list[str]) -> tuple[Scene, Scene]:
    """``(scene without cameras, scene whose training views are those cameras')``, same test views.

    A camera is named as its views' cameras are (``cam02``), or by the part before ``/`` where a view's
    camera name also holds its frame (Panoptic's ``5/000003``: ``5``)."""
    def camera_of(v) -> str:
        return v.camera.name.split("/")[0]

    known = {camera_of(v) for v in scene.train_views}
    if unknown := sorted(set(cameras) - known):
        sys.exit(f"router_study: --router-cameras {' '.join(unknown)}: not training cameras of {scene.name} "
                 f"({', '.join(sorted(known))})")
    rest = [v for v in scene.train_views if camera_of(v) not in cameras]
    held = [v for v in scene.train_views if camera_of(v) in cameras]
    return dataclasses.replace(scene, train_views=rest), dataclasses.replace(scene, train_views=held)


def experts_without(scene: Scene, ckpts: list[Path], out: Path) -> list[Path]:
    """The experts of ``ckpts`` trained again on ``scene``, each with its checkpoint's own training config
    (expert, budget, densification schedule); their checkpoints."""
    paths = []
    for c in ckpts:
        payload = load_expert(c)[1]
        tc = from_dict(TrainConfig, payload["train_config"])
        train_expert(scene, tc, out / payload["expert"], resume=True, progress=False)
        paths.append(out / payload["expert"] / "checkpoints" / "last.pt")
    return paths


def best_psnr(ckpts: list[Path], scene: Scene) -> float:
    """Highest test PSNR of the experts ``ckpts`` on ``scene``."""
    def psnr(c: Path) -> float:
        e = load_expert(c)[0].eval()
        render = lambda v: render_expert(e, v.camera, v.time, background=scene.background).color  # noqa: E731
        return evaluate_renderer(render, scene, scene.test_views, use_lpips=False)["psnr"]
    with torch.no_grad():
        return max(psnr(c) for c in ckpts)


def stacked_psnr(mixture, ckpts: list[Path], scene: Scene) -> float:
    """Test PSNR of ``mixture``'s router over the experts ``ckpts`` instead of its own (same order): a router
    trained on cameras its experts never saw, then used with experts that saw every camera. Only routers
    without Gaussian gates carry over (gates belong to their experts' Gaussians)."""
    mixture.experts = torch.nn.ModuleList([load_expert(c)[0] for c in ckpts])
    mixture.clear_cache()
    return oracle_headroom(mixture, scene, scene.test_views)["mixture_psnr"]


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces a row, without its variant and seed."""
    src = f"--pipeline {args.pipeline}" if args.pipeline else "--experts " + " ".join(str(e) for e in args.experts)
    if args.scene is not None and not args.default_scene:
        src += f" --scene {args.scene}" + (f" --downscale {args.downscale:g}" if args.downscale else "")
    if args.router_cameras:
        src += " --router-cameras " + " ".join(args.router_cameras)
    return f"python benchmarks/router_study.py {src}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", type=Path, help="a pipeline/demo output folder with trained experts")
    p.add_argument("--experts", type=Path, nargs="+", help="expert checkpoints (instead of --pipeline)")
    p.add_argument("--scene", type=Path, help="scene folder (default: the demo's generated scene)")
    p.add_argument("--downscale", type=float, default=None, help="image downscale (default 1 for the demo scene)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=800, help="router steps (the pipeline's default)")
    p.add_argument("--train-views", type=int, default=12, help="training views (evenly spaced) for the headroom")
    p.add_argument("--joint-steps", type=int, default=0, help="stage-3 comparison with this many steps (0: skip)")
    p.add_argument("--distill-steps", type=int, default=0, help="distillation comparison steps (0: skip)")
    p.add_argument("--lam", type=float, nargs="+", default=[0.5],
                   help="distillation: share of the ground-truth term (several: one student each)")
    p.add_argument("--teacher", choices=("study", "pipeline"), default="study",
                   help="distillation's teacher: the first variant's router trained here, or the --pipeline "
                        "folder's own mixture")
    p.add_argument("--router-cameras", nargs="+", default=[], metavar="CAM",
                   help="train the experts without these cameras and the router on them only")
    p.add_argument("--out", type=Path, default=Path("runs/router_study"))
    args = p.parse_args(argv)
    if not args.experts and not args.pipeline:
        p.error("give --pipeline or --experts")
    if args.teacher == "pipeline" and not args.pipeline:
        p.error("--teacher pipeline needs --pipeline")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.default_scene = args.scene is None
    if args.scene is None:
        from moegs.data.synthetic import ensure_default_scene

        args.scene = ensure_default_scene()
        args.downscale = 1.0 if args.downscale is None else args.downscale
    base = MoEConfig(steps=args.steps)
    base.data.downscale = args.downscale
    scene = load_scene(args.scene, base.data)
    ckpts = expert_checkpoints(args)
    given_best, given = None, ckpts
    if args.router_cameras:
        expert_scene, scene = split_router_cameras(scene, args.router_cameras)
        given_best = best_psnr(ckpts, scene)
        ckpts = experts_without(expert_scene, ckpts, args.out / "experts_without_router_cameras")
    train_views = spaced_views(scene.train_views, args.train_views)
    print(f"scene {scene.name}: {len(scene.train_views)} train / {len(scene.test_views)} test views; "
          f"experts {', '.join(str(c) for c in ckpts)}", flush=True)
    rows = []
    for name in args.variants:
        for seed in args.seeds:
            cfg = variant_config(base, name, seed)
            run = args.out / f"{name}_s{seed}"
            # A finished run is picked up where it stopped (no steps left); one over other expert files is refused.
            summary = train_mixture(ckpts, scene, cfg, run, resume=True, progress=False)
            mixture, _ = load_mixture(run / "checkpoints" / "last.pt")
            test = oracle_headroom(mixture, scene, scene.test_views)
            train = oracle_headroom(mixture, scene, train_views)
            row = {"variant": name, "seed": seed, "test_psnr": test["mixture_psnr"],
                   "test_ssim": summary.get("test_ssim"), "best_expert": mixture.names[test["best_expert"]],
                   "gain_db": test["gain_db"], "oracle_psnr": test["oracle_psnr"],
                   **{f"oracle{b}_psnr": x for b, x in test["block_oracle_psnr"].items()},
                   **{f"blend{b}_psnr": x for b, x in test["blend_oracle_psnr"].items()},
                   "realised_test": test["realised"],
                   "realised_train": train["realised"], "gain_train_db": train["gain_db"],
                   **({"gain_vs_given_db": test["mixture_psnr"] - given_best} if given_best is not None else {}),
                   **({"stacked_gain_db": stacked_psnr(mixture, given, scene) - given_best}
                      if given_best is not None and not mixture.router.uses_gates else {}),
                   "command": f"{command(args)} --variants {name} --seeds {seed}"}
            rows.append(row)
            print(format_table([row], [c for c in row if c != "command"]), flush=True)
    print("\n== router study (held-out cameras) ==")
    print(format_table(rows, ["variant", "seed", "test_psnr", "test_ssim", "best_expert", "gain_db", "oracle_psnr",
                              *(f"oracle{b}_psnr" for b in ORACLE_BLOCKS), *(f"blend{b}_psnr" for b in ORACLE_BLOCKS),
                              "realised_test", "realised_train"]
                       + (["gain_vs_given_db", "stacked_gain_db"] if given_best is not None else []) + ["command"]))
    if len(args.seeds) > 1:
        agg = []
        for name in args.variants:
            g = np.array([r["gain_db"] for r in rows if r["variant"] == name])
            f = np.array([r["realised_test"] for r in rows if r["variant"] == name])
            agg.append({"variant": name, "seeds": len(g), "gain_mean_db": float(g.mean()), "gain_min_db": float(g.min()),
                        "gain_max_db": float(g.max()), "realised_test_mean": float(f.mean())})
        print("\n== over seeds ==")
        print(format_table(agg))
    results = {"rows": rows}
    name, seed = args.variants[0], args.seeds[0]
    run = args.out / f"{name}_s{seed}"
    tcfg = TrainConfig(eval_at_end=False, data=base.data, seed=seed)
    if args.joint_steps > 0:
        results["stage3"] = stage3(args, scene, ckpts, variant_config(base, name, seed), run, tcfg)
    if args.distill_steps > 0:
        teacher = args.pipeline / "mixture" if args.teacher == "pipeline" else run
        results["distillation"] = distillation(args, scene, teacher, tcfg)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return rows


def stage3(args, scene, ckpts, cfg: MoEConfig, run: Path, tcfg: TrainConfig) -> list[dict]:
    """The stage-2 run continued with joint fine-tuning vs the experts fine-tuned alone for as long."""
    J = args.joint_steps
    joint = run.with_name(f"{run.name}_joint{J}")
    if not (joint / "summary.json").exists():
        if not joint.exists():
            shutil.copytree(run, joint)
            (joint / "summary.json").unlink()
        train_mixture(ckpts, scene, dataclasses.replace(cfg, joint_steps=J), joint, resume=True, progress=False)
    before, _ = load_mixture(run / "checkpoints" / "last.pt")
    after, _ = load_mixture(joint / "checkpoints" / "last.pt")
    h2, h3 = oracle_headroom(before, scene, scene.test_views), oracle_headroom(after, scene, scene.test_views)
    alone = [finetune(e, scene, J, tcfg, lr_scale=cfg.joint_lr_scale)[1]["psnr"] for e in before.experts]
    rows = [{"model": "mixture, stage 2 only", "test_psnr": h2["mixture_psnr"], "best_expert_psnr": max(h2["expert_psnr"])},
            {"model": f"mixture, + {J} joint steps", "test_psnr": h3["mixture_psnr"],
             "best_expert_psnr": max(h3["expert_psnr"])},
            {"model": f"best expert alone, + {J} steps", "test_psnr": max(alone), "best_expert_psnr": max(alone)}]
    for r in rows:
        r["command"] = f"{command(args)} --variants {args.variants[0]} --joint-steps {J}"
    print(f"\n== stage 3 ({J} steps) vs the experts fine-tuned alone (test views) ==")
    print(format_table(rows, ["model", "test_psnr", "best_expert_psnr"]))
    print("experts alone + steps: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(before.names, alone)))
    return rows


def distillation(args, scene, run: Path, tcfg: TrainConfig) -> list[dict]:
    """The best expert fine-tuned with the router-masked loss vs on the ground truth alone, same steps."""
    mixture, _ = load_mixture(run / "checkpoints" / "last.pt")
    h = oracle_headroom(mixture, scene, scene.test_views)
    k, N = h["best_expert"], args.distill_steps
    students = [(lam, distill(mixture, k, scene, N, tcfg, lam=lam)[1]) for lam in args.lam]
    _, f = finetune(mixture.experts[k], scene, N, tcfg)
    rows = [{"model": f"{mixture.names[k]} as the teacher holds it", "test_psnr": h["expert_psnr"][k]},
            *({"model": f"{mixture.names[k]} + {N} steps, router-masked loss (lambda {lam})", "test_psnr": d["psnr"],
               "test_ssim": d["ssim"]} for lam, d in students),
            {"model": f"{mixture.names[k]} + {N} steps, ground truth alone", "test_psnr": f["psnr"], "test_ssim": f["ssim"]},
            {"model": "mixture (teacher)", "test_psnr": h["mixture_psnr"]}]
    print(f"\n== distillation into {mixture.names[k]} (test views) ==")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
