"""Single-pass multi-expert rendering against one pass per expert, on trained experts.

Measured in one process, alternating the two ways on the same views, with the minimum over
``--repeats`` (the machine's other load affects both alike; ratios are what to read):

- render: a mixture frame (no gradients), its parts (experts' Gaussians at t, projection + colour +
  binning, compositing) for the single pass;
- router step: one stage-2 training step (experts frozen) as it was (one pass per expert, no cache),
  in one pass, and in one pass with the frozen-expert cache warm (the gates splatted by the cached
  compositing weights); then stage 2 as it trains: the mean step over ``--window`` x ``--draws``
  steps of the windowed view order (``MoEConfig.stage2_window`` / ``stage2_repeats``) from a cold
  cache, first draws (which build the cache entries) included, against the same steps as before.

    python benchmarks/multi_render.py --scene DATA --experts a.pt b.pt c.pt [--views 6] [--repeats 5] [--threads N]
        [--downscale F] [--window 8] [--draws 4]
    python benchmarks/multi_render.py --experts ...   # scene: the demo's generated scene, at the demo's resolution
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.gaussians import concat_sets  # noqa: E402
from moegs.moe import MixtureTrainer, MoEConfig, build_mixture, expert_meta  # noqa: E402
from moegs.moe.ablation import format_table  # noqa: E402
from moegs.render import composite_experts, prepare_experts  # noqa: E402
from moegs.train.checkpoint import load_expert  # noqa: E402


def best_of(fns: dict, repeats: int) -> dict:
    """Minimum wall time (ms) of each of ``fns`` over ``repeats`` rounds, the functions alternating."""
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], (time.perf_counter() - t0) * 1000)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", type=Path, help="scene folder (default: the demo's generated scene)")
    p.add_argument("--experts", type=Path, nargs="+", required=True, help="expert checkpoints (2-5)")
    p.add_argument("--views", type=int, default=6, help="training views rendered per round")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads (default: torch's)")
    p.add_argument("--downscale", type=float, default=None,
                   help="image downscale (default: the format's own; 1 for the demo's scene, as the demo)")
    p.add_argument("--window", type=int, default=MoEConfig.stage2_window, help="stage-2 window of views")
    p.add_argument("--draws", type=int, default=MoEConfig.stage2_repeats, help="draws per view in its window")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scene is None:
        from moegs.data.synthetic import default_scene_path

        args.scene = default_scene_path()
        args.downscale = 1.0 if args.downscale is None else args.downscale
    scene = load_scene(args.scene, DataConfig(downscale=args.downscale))
    experts = [load_expert(c)[0] for c in args.experts]
    torch.manual_seed(0)
    cfg = MoEConfig(steps=10**6, device="cpu", eval_at_end=False, prior_views=4)
    mixture, _ = build_mixture(experts, scene, cfg)
    mixture.set_experts_trainable(False)
    views = scene.train_views[:: max(1, len(scene.train_views) // args.views)][: args.views]
    W, H = scene.resolution()
    print(f"{scene.name}: {W}x{H}, experts {mixture.names} with "
          f"{[e.splats['means'].shape[0] for e in experts]} Gaussians, {len(views)} views")

    def frames(single: bool, cache_mb: float = 0.0):
        def run():
            mixture.single_pass, mixture.cache_mb = single, cache_mb
            with torch.no_grad():
                for v in views:
                    mixture.render(v)
        return run

    def parts():
        sets = {}

        def gaussians():
            with torch.no_grad():
                sets.update({v.camera.name: [e.gaussians_at(v.time) for e in experts] for v in views})

        def prepare():
            with torch.no_grad():
                for v in views:
                    gs = concat_sets(sets[v.camera.name])
                    ids = torch.repeat_interleave(torch.arange(len(experts)),
                                                  torch.tensor([len(s) for s in sets[v.camera.name]]))
                    sets[v.camera.name + "/prep"] = prepare_experts(
                        gs.means, gs.quats, gs.log_scales, gs.opacity_logits, gs.colors, ids, len(experts),
                        v.camera, sh_degree=gs.sh_degree, backend=mixture.backend)

        def composite():
            with torch.no_grad():
                for v in views:
                    prep = sets[v.camera.name + "/prep"]
                    composite_experts(prep, extras=prep.rgb.new_ones(prep.rgb.shape[0], 1))
        return {"  experts' Gaussians at t": gaussians, "  projection + colour + bins": prepare,
                "  compositing (K images)": composite}

    n = len(views)
    render = best_of({"K passes": frames(False), "single pass": frames(True), **parts(),
                      "single pass, cache warm": frames(True, 512.0)}, args.repeats)
    rows = [{"render (no grad)": k, "ms/frame": v / n, "fps": 1000 * n / v,
             "vs K passes": render["K passes"] / v} for k, v in render.items()]
    print(format_table(rows))

    metas = [expert_meta(e, {"extent": scene.extent, "times": scene.times}) for e in experts]
    trainer = MixtureTrainer(mixture, scene, cfg, metas)
    trainer.view_for_step = lambda step: views[step % n]

    def steps(single: bool, cache_mb: float):
        def run():
            mixture.single_pass, mixture.cache_mb = single, cache_mb
            for _ in range(n):
                trainer.train_step()
        return run

    trainer.train_step()  # enters stage 2 (experts frozen)
    step = best_of({"before: K passes, no cache": steps(False, 0.0), "single pass, no cache": steps(True, 0.0),
                    "single pass, cache warm": steps(True, 512.0)}, args.repeats)
    base = step["before: K passes, no cache"] / n
    srows = [{"router step": k, "ms/step": v / n, "vs before": base * n / v} for k, v in step.items()]

    # Stage 2 as it trains: the windowed order from a cold cache, every first draw paying for its entry.
    from moegs.train.sampler import sample_view_windowed

    order = [sample_view_windowed(scene.train_views, 0, s, args.window, args.draws) for s in range(args.window * args.draws)]

    def windowed(single: bool, cache_mb: float):
        def run():
            mixture.single_pass, mixture.cache_mb = single, cache_mb
            mixture.clear_cache()
            for s, v in enumerate(order):
                trainer.view_for_step = lambda step, v=v: v
                trainer.train_step()
        return run

    wins = best_of({"before": windowed(False, 0.0), "after": windowed(True, 512.0)}, max(1, args.repeats // 2))
    srows.append({"router step": f"as trained: {args.window} views x {args.draws} draws, cold cache",
                  "ms/step": wins["after"] / len(order), "vs before": wins["before"] / wins["after"]})
    print(format_table(srows))
    return {"render": rows, "router_step": srows}


if __name__ == "__main__":
    main()
