"""One check of the GPU path, to run once on a machine with an NVIDIA GPU.

    pip install -e ".[cuda,test]"      # gsplat; this script installs nothing itself
    python benchmarks/gpu_check.py [--steps 300] [--moe-steps 200] [--out runs/gpu_check]

It (1) runs the cuda tests, (2) trains every registered expert for ``--steps`` steps and a mixture of
three of them for ``--moe-steps`` steps on the generated demo scene with the cuda backend, and (3) renders
each trained model's test views with the cuda backend and with the cpu backend from the same weights,
then prints one table: training time, test PSNR on cuda, FPS on cuda, and how far the two backends' renders
are apart (PSNR of one against the other, max abs difference). Exit status 0 when every step ran and the
backends agree (render-vs-render PSNR above ``--agree-db``), 1 otherwise, 2 when no GPU / gsplat is present.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.data.synthetic import ensure_default_scene  # noqa: E402
from moegs.eval.metrics import psnr  # noqa: E402
from moegs.experts import EXPERTS, render_expert  # noqa: E402
from moegs.moe import MoEConfig, load_mixture, train_mixture  # noqa: E402
from moegs.train import TrainConfig  # noqa: E402
from moegs.train.checkpoint import load_expert  # noqa: E402
from moegs.train.run import train_expert  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of each expert")
    p.add_argument("--moe-steps", type=int, default=200, help="router steps of the mixture")
    p.add_argument("--moe-experts", default="static,spacetime,keyframe", help="experts of the mixture")
    p.add_argument("--agree-db", type=float, default=40.0, help="least PSNR between cuda and cpu renders")
    p.add_argument("--out", default="runs/gpu_check", help="run folder")
    p.add_argument("--skip-tests", action="store_true", help="do not run the cuda tests")
    return p.parse_args(argv)


@torch.no_grad()
def compare_backends(render, scene) -> dict:
    """``render(view, backend, device) -> [H, W, 3]``: PSNR of cpu against cuda, max abs diff, cuda FPS."""
    agree, diff, n = 0.0, 0.0, 0
    t_cuda = 0.0
    for v in scene.test_views:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a = render(v, "cuda", "cuda")
        torch.cuda.synchronize()
        t_cuda += time.perf_counter() - t0
        b = render(v, "cpu", "cpu")
        agree += psnr(a.cpu().clamp(0, 1), b.clamp(0, 1))
        diff = max(diff, float((a.cpu() - b).abs().max()))
        n += 1
    return {"agree_db": agree / max(1, n), "max_abs_diff": diff, "fps_cuda": n / max(t_cuda, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing to check", file=sys.stderr)
        return 2
    try:
        import gsplat  # noqa: F401
    except ImportError:
        print('gpu_check: gsplat is not installed; run pip install -e ".[cuda,test]" first', file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, gsplat {gsplat.__version__}")
    ok = True
    if not args.skip_tests:
        tests = sorted(str(p) for p in (REPO / "tests").glob("test_*cuda*.py"))
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", *tests], cwd=REPO)
        print(f"cuda tests: {'passed' if rc == 0 else f'FAILED (exit {rc})'}")
        ok &= rc == 0

    out = Path(args.out)
    scene = load_scene(ensure_default_scene(), DataConfig(downscale=1.0))
    rows = []
    for name in EXPERTS:
        cfg = TrainConfig(expert=name, steps=args.steps, backend="cuda", device="cuda",
                          checkpoint_every=args.steps, log_every=max(1, args.steps // 10))
        cfg.strategy.refine_start_iter = max(1, args.steps // 10)
        cfg.strategy.refine_every = max(1, args.steps // 20)
        cfg.strategy.reset_every = 0
        row = {"model": name}
        try:
            s = train_expert(scene, cfg, out / name, progress=False)
            gpu, _ = load_expert(out / name / "checkpoints" / "last.pt")
            cpu, _ = load_expert(out / name / "checkpoints" / "last.pt")
            models = {"cuda": gpu.to("cuda").eval(), "cpu": cpu.eval()}
            row.update(train_s=s["train_time_s"], test_psnr=s["test_psnr"], gaussians=s["test_num_gaussians"],
                       **compare_backends(lambda v, b, d: render_expert(models[d], v.camera, v.time,
                                                                       background=scene.background,
                                                                       backend=b).color, scene))
        except Exception as e:  # report and go on: the table says what failed
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(row)

    names = args.moe_experts.split(",")
    row = {"model": f"mixture ({', '.join(names)})"}
    try:
        ckpts = [out / n / "checkpoints" / "last.pt" for n in names]
        s = train_mixture(ckpts, scene, MoEConfig(steps=args.moe_steps, backend="cuda", device="cuda",
                                                  eval_experts=False), out / "mixture", progress=False)
        mixtures = {}
        for dev, backend in (("cuda", "cuda"), ("cpu", "cpu")):
            m, _ = load_mixture(out / "mixture" / "checkpoints" / "last.pt", dev)
            m.backend = backend
            mixtures[dev] = m.eval()
        row.update(train_s=s["train_time_s"], test_psnr=s["test_psnr"], gaussians=sum(s["test_num_gaussians"]),
                   **compare_backends(lambda v, b, d: mixtures[d].render(v).color, scene))
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    rows.append(row)

    cols = ("model", "train_s", "test_psnr", "fps_cuda", "gaussians", "agree_db", "max_abs_diff")
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | FAILED: {r['error']} |")
            ok = False
            continue
        ok &= r["agree_db"] >= args.agree_db
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"\ngpu_check: {'all good' if ok else 'PROBLEMS above'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
