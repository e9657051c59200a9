"""The whole method on one scene: train the experts, train the mixture over them, write a report.

``moegs demo`` runs it on the generated default scene; ``moegs pipeline PATH`` on any scene.
Each stage writes its own run directory and is skipped when already complete, so an interrupted
pipeline continues where it stopped (a stage interrupted mid-way resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import io
from .data import DataConfig, Scene, load_scene, synthetic
from .experts import ExpertConfig, expert_config
from .moe import Mixture, MoEConfig, load_mixture, oracle_headroom, region_psnr, train_mixture
from .moe.evaluate import ORACLE_BLOCKS
from .moe.build import spaced_views
from .moe.efficiency import efficiency_table, format_efficiency_table
from .moe.prune import prune_and_finetune
from .moe.viz import render_weight_video, save_weight_figure, usage_histogram
from .moe.distill import finetune
from .train import TrainConfig
from .train.checkpoint import load_expert
from .train.run import train_expert

__all__ = ["PipelineConfig", "expert_train_config", "run_pipeline"]


@dataclass
class PipelineConfig:
    """Experts, then the mixture, then the report."""

    # Experts of the mixture (2 to 5, by name), each with its config and trained alone first;
    # ``--set experts.<name>.<field>=v`` sets one expert's field.
    experts: dict[str, ExpertConfig] = field(
        default_factory=lambda: {n: expert_config(n) for n in ("static", "spacetime", "keyframe")})
    # Training steps of every expert (one budget for all, so they compare fairly).
    expert_steps: int = 1200
    # How the scene is read.
    data: DataConfig = field(default_factory=DataConfig)
    # Mixture training (router, gates, stages). The gates router (no decoder) realised the most of the
    # oracle's headroom on held-out cameras of the demo scene (benchmarks/router_study.py; README "Routers").
    # Stage 3 is on: on the demo's experts 400 joint steps take the mixture from 23.45 to 23.63 dB while the
    # best expert fine-tuned alone as long reaches 23.53 (`python benchmarks/router_study.py --pipeline runs/demo
    # --variants gates --joint-steps 400`); the report gives that baseline beside the mixture.
    moe: MoEConfig = field(default_factory=lambda: MoEConfig(steps=800, router="gates", joint_steps=400))
    # Densification of every expert: stop growing beyond this many Gaussians (0 = unlimited).
    max_gaussians: int = 20_000
    # Rasterizer backend for everything: auto, cpu, torch or cuda.
    backend: str = "auto"
    # Random seed of every stage.
    seed: int = 0

    def with_experts(self, names: list[str]) -> "PipelineConfig":
        """Use the experts ``names`` (their default configs, or the ones already set here)."""
        self.experts = {n: self.experts.get(n) or expert_config(n) for n in names}
        return self


def expert_train_config(cfg: PipelineConfig, name: str) -> TrainConfig:
    """The training config of expert ``name`` in pipeline ``cfg`` (its budget and densification schedule)."""
    tc = TrainConfig(expert=cfg.experts[name], steps=cfg.expert_steps, data=cfg.data, backend=cfg.backend,
                     seed=cfg.seed, checkpoint_every=max(1, cfg.expert_steps // 4))
    s = tc.strategy
    s.refine_start_iter = max(1, cfg.expert_steps // 10)
    s.refine_stop_iter = int(cfg.expert_steps * 0.75)
    s.refine_every = max(1, cfg.expert_steps // 40)
    s.reset_every = 0  # too few steps for the opacity to recover from a reset
    s.max_gaussians = cfg.max_gaussians
    tc.sh_increase_every = max(1, cfg.expert_steps // 5)
    return tc


def _done(run: Path) -> dict | None:
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


def run_pipeline(data: str | Path | Scene, config: PipelineConfig, out: str | Path, progress: bool = True) -> dict:
    """Train ``config.experts`` then the mixture on ``data``; write ``out/report.md`` and ``out/report.json``."""
    out = Path(out)
    t0 = time.perf_counter()
    scene = data if isinstance(data, Scene) else load_scene(data, config.data)
    rows: dict[str, dict] = {}
    ckpts = []
    for name in config.experts:
        run = out / "experts" / name
        summary = _done(run) or train_expert(scene, expert_train_config(config, name), run, resume=True,
                                             progress=progress)
        rows[name] = summary
        ckpts.append(run / "checkpoints" / "last.pt")
    moe_cfg = config.moe
    moe_cfg.backend = config.backend
    moe_cfg.data = config.data  # recorded in the mixture's checkpoint: how its scene is read again
    moe_run = out / "mixture"
    moe_summary = _done(moe_run) or train_mixture(ckpts, scene, moe_cfg, moe_run, resume=True, progress=progress)
    baseline = _stage3_baseline(scene, config, rows, ckpts, out, progress) if moe_cfg.joint_steps > 0 else None
    report = _report(scene, config, rows, moe_summary, moe_run, out, baseline)
    report["pipeline_time_s"] = round(time.perf_counter() - t0, 1)
    io.write_json(out / "report.json", report)
    return report


def _stage3_baseline(scene: Scene, config: PipelineConfig, rows: dict, ckpts: list[Path], out: Path,
                     progress: bool) -> dict:
    """The best expert fine-tuned alone for the mixture's joint steps at the same learning-rate scale: what
    stage 3 must beat for the mixture's gain to be its own (``out/baseline/summary.json``; skipped when done for
    the same expert and steps)."""
    run = out / "baseline"
    best = max(rows, key=lambda n: rows[n].get("test_psnr") or float("-inf"))
    J = config.moe.joint_steps
    done = _done(run)
    if done is not None and done.get("expert") == best and done.get("steps") == J:
        return done
    expert, _ = load_expert(ckpts[list(rows).index(best)])
    _, res = finetune(expert, scene, J, expert_train_config(config, best), lr_scale=config.moe.joint_lr_scale,
                      progress=progress)
    summary = {"model": f"{best} + {J} steps alone", "expert": best, "steps": J, "test_psnr": res.get("psnr"),
               "test_ssim": res.get("ssim"), "test_lpips": res.get("lpips"), "train_time_s": res["train_time_s"]}
    io.write_json(run / "summary.json", summary)
    return summary


@torch.no_grad()
def _report(scene: Scene, config: PipelineConfig, rows: dict, moe_summary: dict, moe_run: Path, out: Path,
            baseline: dict | None) -> dict:
    mixture, payload = load_mixture(moe_run / "checkpoints" / "last.pt")
    mixture.eval()
    fig_dir = out / "figures"
    figures = []
    views = scene.test_views[:: max(1, len(scene.test_views) // 3)][:3]
    for i, v in enumerate(views):
        o = mixture.render(v)
        p = save_weight_figure(o, mixture.names, fig_dir / f"weights_{i}.png", gt=scene.image(v),
                               title=f"{v.camera.name} t={v.time:.2f}")
        figures.append(p.relative_to(out).as_posix())
    usage = usage_histogram(mixture, scene, fig_dir / "usage.png")
    video = render_weight_video(mixture, scene.test_views[0].camera, scene.times, fig_dir / "weights.mp4")
    # Every FPS of the report comes from one interleaved measurement (the efficiency table's),
    # not from timings taken at the end of each training run under different loads.
    pruning: dict = {}
    eff = efficiency_table(mixture, scene, repeats=1, prune=lambda m: pruning.update(
        prune_and_finetune(m, scene, config.moe, payload["experts"])))
    fps = {r["model"]: r["fps"] for r in eff}
    table = [{"model": n, "test_psnr": r.get("test_psnr"), "test_ssim": r.get("test_ssim"),
              "test_lpips": r.get("test_lpips"), "fps": fps[n],
              "gaussians": r.get("test_num_gaussians"), "size_mb": r.get("test_size_mb"),
              "train_s": r.get("train_time_s")} for n, r in rows.items()]
    table.append({"model": f"mixture ({moe_summary.get('router')})", "test_psnr": moe_summary.get("test_psnr"),
                  "test_ssim": moe_summary.get("test_ssim"), "test_lpips": moe_summary.get("test_lpips"),
                  "fps": fps["mixture " + ("single-pass" if mixture.single_pass else "K-pass")], "gaussians": sum(moe_summary.get("test_num_gaussians") or []),
                  "size_mb": None, "train_s": moe_summary.get("train_time_s")})
    if baseline is not None:
        table.append({"model": baseline["model"], "test_psnr": baseline["test_psnr"], "test_ssim": baseline["test_ssim"],
                      "test_lpips": baseline["test_lpips"], "fps": None, "gaussians": None, "size_mb": None,
                      "train_s": baseline["train_time_s"]})
    best = max(rows, key=lambda n: rows[n].get("test_psnr") or float("-inf"))
    gain = (moe_summary.get("test_psnr") or float("nan")) - (rows[best].get("test_psnr") or float("nan"))
    fair = None if baseline is None else (moe_summary.get("test_psnr") or float("nan")) - baseline["test_psnr"]
    lines = [f"# moegs report: {scene.name}", "",
             f"{len(scene.train_views)} training views, {len(scene.test_views)} test views, "
             f"{scene.num_cameras} cameras, {len(scene.times)} times. Experts: {', '.join(config.experts)} "
             f"({config.expert_steps} steps each); mixture router `{moe_summary.get('router')}`.", "",
             "| model | test PSNR | SSIM | LPIPS | FPS | Gaussians | size MB | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r[k]) for k in ("model", "test_psnr", "test_ssim", "test_lpips", "fps",
                                                              "gaussians", "size_mb", "train_s")) + " |")
    head = {split: oracle_headroom(mixture, scene, views) for split, views in
            (("test", scene.test_views), ("train", spaced_views(scene.train_views, len(scene.test_views))))}
    vs = f"Mixture vs best single expert ({best}): {gain:+.2f} dB test PSNR"
    if baseline is not None:
        vs += (f"; vs {best} fine-tuned alone for the mixture's {baseline['steps']} joint steps at the same learning-rate "
               f"scale (what stage 3 must beat): {fair:+.2f} dB")
    lines += ["", vs + ".", "",
              "Per-pixel oracle (at each pixel the expert closest to the ground truth), the share of its "
              "headroom over the best expert the router realises, the oracles choosing one expert per "
              "tile of b x b pixels, and those taking the best blend of the experts per tile (what a router whose "
              "choice, or weights, vary no faster than the tiles could reach):", "",
              "| views | mixture PSNR | best expert PSNR | oracle PSNR | headroom realised | "
              + " | ".join(f"oracle {b}x{b}" for b in ORACLE_BLOCKS) + " | "
              + " | ".join(f"blend {b}x{b}" for b in ORACLE_BLOCKS) + " |",
              "|---|---|---|---|---|" + "---|" * 2 * len(ORACLE_BLOCKS)]
    for split, h in head.items():
        lines.append(f"| {split} ({len(scene.test_views)}) | {h['mixture_psnr']:.2f} | {max(h['expert_psnr']):.2f} | "
                     f"{h['oracle_psnr']:.2f} | {100 * h['realised']:.0f} % | "
                     + " | ".join(f"{h[key][b]:.2f}" for key in ("block_oracle_psnr", "blend_oracle_psnr")
                                  for b in ORACLE_BLOCKS) + " |")
    regions = _regions(mixture, scene)
    if regions:
        lines += ["", "Test PSNR by region of the generated scene (each pixel labelled with the ground-truth component "
                  "that contributes most to it; a region's PSNR over all its pixels in the test views together; "
                  f"each expert as the mixture holds it{', after its joint steps' if config.moe.joint_steps else ''}):",
                  "", "| region | pixels | mixture's squared error | " + " | ".join(mixture.names)
                  + " | mixture | mixture - best expert |", "|---|---|---|" + "---|" * (len(mixture.names) + 2)]
        for r in regions:
            best_r = max(r["expert_psnr"])
            lines.append(f"| {r['region']} | {100 * r['share']:.1f} % | {100 * r['error_share']:.1f} % | "
                         + " | ".join(("**%.2f**" if p == best_r else "%.2f") % p for p in r["expert_psnr"])
                         + f" | {r['mixture_psnr']:.2f} | {r['mixture_psnr'] - best_r:+.2f} |")
    lines += ["",
              "Mean per-pixel weight of each expert on the test views: "
              + ", ".join(f"{n} {u:.2f}" for n, u in zip(mixture.names, usage["usage"])), "",
              "![usage](figures/usage.png)", ""]
    lines += [f"![weights]({f})" for f in figures]
    lines += ["", f"Weight-map video of test camera {scene.test_views[0].camera.name}: "
              f"[{video.relative_to(out).as_posix()}]({video.relative_to(out).as_posix()})", ""]
    kept = sum(pruning["after"])
    lines += [f"Efficiency on the test views (FPS on this machine; each expert as the mixture holds it"
              f"{', after its joint steps' if config.moe.joint_steps else ''}). Pruned: a copy gate-pruned to the "
              f"Gaussians carrying {pruning['keep']:.0%} of the blend's contributions (those adding at least "
              f"{pruning['threshold']:.3g} px; {kept} of {kept + sum(pruning['removed'])} kept), then "
              f"fine-tuned jointly for {pruning['steps']} steps ({pruning['finetune_s']} s):", "", "```",
              format_efficiency_table(eff), "```", ""]
    lpips_note = next((r.get("test_lpips_note") for r in rows.values() if r.get("test_lpips_note")), None)
    if lpips_note:
        lines.append(f"_{lpips_note}_")
    text = "\n".join(lines) + "\n"
    io.write_text(out / "report.md", text)
    return {"table": table, "efficiency": eff, "pruning": pruning, "best_expert": best, "gain_over_best_db": gain,
            "stage3_baseline": baseline, "gain_over_finetuned_best_db": fair, "usage": usage["usage"], "oracle": head,
            "regions": regions,
            "figures": figures, "video": video.relative_to(out).as_posix()}


def _regions(mixture: Mixture, scene: Scene) -> list[dict]:
    """:func:`~moegs.moe.region_psnr` on the test views when ``scene`` is a generated scene (whose components
    label every pixel), else ``[]``."""
    cfg = synthetic.read_config(scene.info["path"]) if scene.info.get("path") else None
    if cfg is None:
        return []
    gt = synthetic.ground_truth(cfg)
    return region_psnr(mixture, scene, scene.test_views, lambda v: gt.regions(v.camera), synthetic.COMPONENTS)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)
