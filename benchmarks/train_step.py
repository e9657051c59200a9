"""Training-step benchmark: where one optimisation step of each expert spends its time on the CPU.

For every expert (default: all registered) the script trains briefly on the scene (or loads a
checkpoint), then times the training steps that follow ``--at-step`` (past the warm-ups, at full SH
degree), split into: deformation (``gaussians_at``), projection +
colour, compositing forward (binning, compositing), loss (L1 + D-SSIM, regularisers), backward, strategy (densification
statistics) and optimizer. Beside it, the compositing forward + backward of the same frame
alone, and the ratio step / compositing (what a step costs beyond the kernel that renders).
The last columns bound that ratio from below by what the expert's own method costs: its
deformation (``gaussians_at``: motion, or the neural field and its heads) forward + backward
alone, plus the optimizer step over its parameters, i.e. (compositing + deformation fwd+bwd +
optimizer) / compositing; no change outside the expert's method can bring a step below it. For the
experts with a network, a second bound asks what the network's arithmetic alone would cost at the
machine's peak: the matrix-product FLOPs of its deformation forward + backward (torch's
``FlopCounterMode``) at the FLOP rate of a large float32 matrix product measured on the spot,
(compositing + FLOPs / peak) / compositing; no implementation of the same network, however fused,
gets under it.
A second table times the pure-PyTorch reference projection + colour against the fused native
op on the same Gaussians (forward, and forward + backward). Medians over ``--repeats`` steps. A
third gives the cost of one OpenMP region under the wait policy in effect (``OMP_WAIT_POLICY``,
passive unless set): a 2.5 MB tensor copy on torch's threads and on one thread, the price every
torch op over more than 32k values pays when the other threads sleep between regions.

    python benchmarks/train_step.py [SCENE] [--experts static,spacetime] [--train-steps 100] [--at-step 3001]
        [--repeats 10] [--checkpoint EXPERT=PATH ...] [--downscale F] [--threads N]

Without ``SCENE`` it uses the generated demo scene (``moegs demo``'s, 10 cameras x 24 frames at
160x120, generated and cached on first use). Threads: torch's intra-op count (``--threads``, default
torch's own) is the one the native ops use as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.data.synthetic import ensure_default_scene  # noqa: E402
from moegs.runtime import tune_allocator  # noqa: E402
from moegs.experts import EXPERTS, build_expert  # noqa: E402
from moegs.render import (background_or_none, bin_gaussians, blend_background, project_and_color,  # noqa: E402
                          resolve_backend)
from moegs.render._cpu import composite_cpu  # noqa: E402
from moegs.train import TrainConfig  # noqa: E402
from moegs.train.checkpoint import load_expert  # noqa: E402
from moegs.train.run import scene_init  # noqa: E402
from moegs.train.trainer import Trainer  # noqa: E402

PHASES = ("deform", "project", "composite", "loss", "backward", "strategy", "optimizer")


def clock() -> float:
    return time.perf_counter() * 1e3


def timed_step(tr: Trainer, backend: str) -> tuple[dict[str, float], tuple]:
    """One training step equal to ``Trainer.train_step``, with the render inlined phase by phase.
    Returns the phase times (ms) and the frame's compositing inputs."""
    step, expert, cfg = tr.step, tr.expert, tr.cfg
    t = {"start": clock()}
    expert.on_step(step)
    expert.sh_degree = min(expert.max_sh_degree, step // max(1, cfg.sh_increase_every))
    tr.opt.set_step(step)
    view = tr.view_for_step(step)
    camera, target = view.camera, tr.scene.image(view)
    gs = expert.gaussians_at(float(view.time))
    t["deform"] = clock()
    proj, rgb = project_and_color(gs.means, gs.quats, gs.log_scales, gs.colors, camera,
                                  sh_degree=gs.sh_degree if gs.is_sh else None, backend=backend)
    opac = torch.sigmoid(gs.opacity_logits)
    t["project"] = clock()
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, camera.width, camera.height)
    features = torch.cat((rgb, proj.depths[:, None]), dim=-1)
    out, alpha = composite_cpu(proj.means2d, proj.conics, opac, features, bins, camera.width, camera.height)
    proj.means2d.retain_grad()
    color = blend_background(out[..., :3], alpha, background_or_none(tr.background, out))
    t["composite"] = clock()
    loss = tr.image_loss(color, view, target)
    for v in expert.regularization(step).values():
        loss = loss + v
    meta = {"means2d": proj.means2d, "radii": proj.radii, "depths": proj.depths, "width": camera.width,
            "height": camera.height, "backend": backend}
    tr.strategy.step_pre_backward(expert.splats, tr.opt.optimizers, tr.strategy_state, step, meta)
    t["loss"] = clock()
    loss.backward()
    t["backward"] = clock()
    tr.strategy.step_post_backward(expert.splats, tr.opt.optimizers, tr.strategy_state, step, meta)
    t["strategy"] = clock()
    tr.opt.step()
    tr.opt.zero_grad()
    tr.step += 1
    t["optimizer"] = clock()
    keys = ("start", *PHASES)
    phases = {k: t[k] - t[p] for p, k in zip(keys, keys[1:])}
    frame = tuple(x.detach() for x in (proj.means2d, proj.conics, opac, features))
    return phases, (frame, bins, camera)


def composite_alone(frame, bins, camera) -> float:
    """ms of the compositing forward + backward of one frame on its own (random output gradient)."""
    leaves = [x.clone().requires_grad_() for x in frame]
    t0 = clock()
    out, alpha = composite_cpu(*leaves, bins, camera.width, camera.height)
    (out.sum() + alpha.sum()).backward()
    return clock() - t0


def _deform_outputs(expert, t: float) -> list:
    """The expert's deformation at ``t`` (``gaussians_at``) as scalars whose gradients are every output's 1."""
    gs = expert.gaussians_at(t)
    colors = gs.colors if isinstance(gs.colors, tuple) else (gs.colors,)
    return [x.sum() for x in (gs.means, gs.quats, gs.log_scales, gs.opacity_logits, *colors) if x.requires_grad]


def deform_alone(expert, t: float) -> float:
    """ms of the expert's deformation forward + backward on its own (every output's gradient 1; the
    parameters' ``.grad`` is left untouched)."""
    params = [p for p in expert.parameters() if p.requires_grad]
    t0 = clock()
    torch.autograd.grad(_deform_outputs(expert, t), params, allow_unused=True)
    return clock() - t0


def deform_flops(expert, t: float) -> int:
    """Matrix-product FLOPs (``FlopCounterMode``: matmuls and convolutions) of :func:`deform_alone`'s work (the
    parameters' ``.grad`` is restored after)."""
    params = [p for p in expert.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    with FlopCounterMode(display=False) as counter:
        torch.autograd.backward(_deform_outputs(expert, t))
    for p, g in zip(params, saved):
        p.grad = g
    return counter.get_total_flops()


def gemm_peak(repeats: int = 5) -> float:
    """FLOP/s of a 2048 x 2048 float32 matrix product on torch's threads (the best of ``repeats``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * 2048**3 / (best * 1e-3)


def _timed(fn) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def projection_compare(expert, camera, repeats: int) -> dict[str, float]:
    """Median ms of the torch reference and the fused projection + colour, forward and forward + backward."""
    gs = expert.gaussians_at(float(camera.time))
    sh = gs.is_sh
    leaf = lambda x: x.detach().clone().requires_grad_()  # noqa: E731
    colors = tuple(map(leaf, gs.colors)) if isinstance(gs.colors, tuple) else leaf(gs.colors)  # as the expert gives them
    inputs = [*map(leaf, (gs.means, gs.quats, gs.log_scales)), colors]
    res = {}
    for backend in ("torch", "cpu"):
        for mode in ("fwd", "fwd+bwd"):
            times = []
            for _ in range(repeats):
                t0 = clock()
                with torch.set_grad_enabled(True):
                    proj, rgb = project_and_color(*inputs, camera, sh_degree=gs.sh_degree if sh else None,
                                                  backend=backend)
                    if mode == "fwd+bwd":
                        (proj.means2d.sum() + proj.conics.sum() + proj.depths.sum() + rgb.sum()).backward()
                times.append(clock() - t0)
            res[f"{backend} {mode}"] = statistics.median(times)
    return res


def region_cost(repeats: int = 200) -> dict[int, float]:
    """Median us of copying a ``[10000, 64]`` float32 tensor (2.5 MB), on torch's thread count and on one."""
    a = torch.randn(10000, 64)
    b = torch.empty_like(a)
    threads = torch.get_num_threads()
    res = {}
    for n in dict.fromkeys((threads, 1)):
        torch.set_num_threads(n)
        try:
            for _ in range(20):
                b.copy_(a)
            times = []
            for _ in range(repeats):
                t0 = clock()
                b.copy_(a)
                times.append((clock() - t0) * 1e3)
            res[n] = statistics.median(times)
        finally:
            torch.set_num_threads(threads)
    return res


def bench_expert(name: str, scene, args) -> tuple[dict, dict]:
    # The default run length: learning rates at --at-step are those of a real run at that step.
    cfg = TrainConfig(expert=name, backend="cpu", seed=0, checkpoint_every=10**9, eval_at_end=False)
    backend = resolve_backend("cpu", torch.device("cpu"))
    ckpt = dict(item.split("=", 1) for item in args.checkpoint).get(name)
    if ckpt:
        expert, _ = load_expert(ckpt)
        tr = Trainer(expert, scene, cfg, device=torch.device("cpu"))
    else:
        torch.manual_seed(0)
        tr = Trainer(build_expert(cfg.expert, scene_init(scene)), scene, cfg, device=torch.device("cpu"))
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            tr.train_step()
        print(f"  trained {name} {args.train_steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # Time the steps of a run's middle: past every expert's warm-up (deformation fields on, keyframes
    # subdivided), at the highest SH degree, between two densifications.
    tr.step = max(tr.step, args.at_step)
    phases, full, alone, deform = [], [], [], []
    for i in range(args.repeats + 2):
        s0 = clock()
        tr.train_step()  # the real step, for the total
        real = clock() - s0
        p, frame = timed_step(tr, backend)
        if i >= 2:  # warm-up
            full.append(real)
            phases.append(p)
            alone.append(composite_alone(*frame))
            deform.append(deform_alone(tr.expert, float(frame[2].time)))
    med = {k: statistics.median(p[k] for p in phases) for k in PHASES}
    row = {"expert": name, "N": int(tr.expert.splats["means"].shape[0]), "sh": tr.expert.sh_degree, **med,
           "step": statistics.median(full), "comp": statistics.median(alone), "deform_alone": statistics.median(deform)}
    row["ratio"] = row["step"] / row["comp"]
    row["bound"] = (row["comp"] + row["deform_alone"] + row["optimizer"]) / row["comp"]
    row["gflop"] = deform_flops(tr.expert, float(frame[2].time)) / 1e9
    row["flop_bound"] = (row["comp"] + row["gflop"] * 1e9 / args.peak * 1e3) / row["comp"]
    cam = tr.view_for_step(0).camera
    return row, {"expert": name, **projection_compare(tr.expert, cam, args.repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene", nargs="?", help="scene folder (default: the generated demo scene)")
    ap.add_argument("--experts", default=",".join(EXPERTS), help="comma-separated expert names")
    ap.add_argument("--train-steps", type=int, default=100, help="training steps before timing (opacities and "
                    "colours past their initial values; the count is the initial points)")
    ap.add_argument("--at-step", type=int, default=3001, help="training step the timed steps start from "
                    "(schedules, warm-ups and SH degree as at that step)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per expert (medians)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="EXPERT=PATH",
                    help="time a trained expert's checkpoint instead of training")
    ap.add_argument("--downscale", type=float, default=None,
                    help="image downscale factor (default: 1 for the demo scene, the format's own otherwise)")
    ap.add_argument("--threads", type=int, default=None, help="torch (and native op) threads")
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="leave glibc malloc as it is (the moegs command line tunes it: moegs.runtime.tune_allocator)")
    args = ap.parse_args()
    tuned = False if args.no_tune_allocator else tune_allocator()
    names = [n for n in args.experts.split(",") if n]
    for n in names:
        if n not in EXPERTS:
            raise SystemExit(f"train_step.py: error: unknown expert {n!r}; choose from {', '.join(EXPERTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    downscale = args.downscale if args.downscale is not None or args.scene else 1.0
    scene = load_scene(args.scene or ensure_default_scene(), DataConfig(downscale=downscale))
    args.peak = gemm_peak()
    rows, comps = [], []
    for n in names:
        row, comp = bench_expert(n, scene, args)
        rows.append(row)
        comps.append(comp)
    v = scene.train_views[0].camera
    print(f"\nscene {scene.name} at {v.width}x{v.height}, {torch.get_num_threads()} threads, allocator "
          f"{'tuned' if tuned else 'as is'}; ms per step, median of {args.repeats}; float32 matrix products "
          f"at {args.peak / 1e9:.0f} GFLOP/s\n")
    print("| expert | N | SH | deform | project+colour | composite fwd | loss | backward | strategy | optimizer | step "
          "| composite fwd+bwd alone | step / composite | deform fwd+bwd alone | bound | network GFLOP | bound at peak FLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['expert']} | {r['N']} | {r['sh']} | " + " | ".join(f"{r[k]:.1f}" for k in PHASES)
              + f" | {r['step']:.1f} | {r['comp']:.1f} | {r['ratio']:.2f}x | {r['deform_alone']:.1f} | {r['bound']:.2f}x "
              f"| {r['gflop']:.2f} | {r['flop_bound']:.2f}x |")
    print("\n| expert | torch fwd | fused fwd | speed-up | torch fwd+bwd | fused fwd+bwd | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for c in comps:
        print(f"| {c['expert']} | {c['torch fwd']:.2f} | {c['cpu fwd']:.2f} | {c['torch fwd'] / c['cpu fwd']:.1f}x "
              f"| {c['torch fwd+bwd']:.2f} | {c['cpu fwd+bwd']:.2f} | "
              f"{c['torch fwd+bwd'] / c['cpu fwd+bwd']:.1f}x |")
    cost = region_cost()
    print(f"\nOne OpenMP region (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}): a 2.5 MB copy, median us\n")
    print("| threads | us |\n|---|---|")
    for n, us in cost.items():
        print(f"| {n} | {us:.0f} |")


if __name__ == "__main__":
    main()
