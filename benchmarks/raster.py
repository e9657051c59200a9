"""Rasterizer benchmark: the compiled ``cpu`` backend against the ``torch`` reference.

Renders a synthetic scene shaped like a trained one (Gaussians a few pixels across, ~3 tiles
each, RGB colour plus one extra channel) through the public ``rasterize`` API and reports, per
scene size and backend, the median wall time of the forward pass (autograd recording, as in
training) and of forward + backward, and the peak memory.

Memory: torch's CPU allocations are invisible to ``tracemalloc``, so every (scene, backend,
pass) measurement runs in its own subprocess, which reports its peak resident set size
(``resource.getrusage(...).ru_maxrss``) and that peak minus the resident size just before
the first render (the scene, torch and the extension already loaded): the memory the
rendering itself needed.

    python benchmarks/raster.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from moegs.cameras import Camera  # noqa: E402
from moegs.render import bin_gaussians, project_gaussians, rasterize  # noqa: E402

SCENES = {"5k@200x150": (5_000, 200, 150), "30k@400x300": (30_000, 400, 300)}
BACKENDS = ("cpu", "torch")
PASSES = ("forward", "forward+backward")


def make_scene(n: int, width: int, height: int, seed: int = 0):
    """Gaussians filling the view at depth 3..8 with footprints of ~1.5-2.5 px standard deviation
    (radius 3 sigma: ~5-8 px), random anisotropy and orientation, opacities mostly 0.5-0.95."""
    g = torch.Generator().manual_seed(seed)
    fx = 0.9 * width
    cam = Camera(torch.eye(4), fx=fx, fy=fx, cx=width / 2, cy=height / 2, width=width, height=height)
    z = 3.0 + 5.0 * torch.rand(n, generator=g)
    u = (torch.rand(n, generator=g) * 1.1 - 0.05) * width
    v = (torch.rand(n, generator=g) * 1.1 - 0.05) * height
    means = torch.stack(((u - cam.cx) / fx * z, (v - cam.cy) / fx * z, z), -1)
    quats = torch.randn(n, 4, generator=g)
    pixel_sigma = 2.0 * width / 400  # same look at both resolutions
    log_scales = math.log(pixel_sigma / fx) + torch.log(z)[:, None] + 0.35 * torch.randn(n, 3, generator=g)
    logits = 1.5 + 1.0 * torch.randn(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    extras = torch.randn(n, 1, generator=g)
    return [means, quats, log_scales, logits, colors, extras], cam


def tiles_per_gaussian(params, cam) -> float:
    with torch.no_grad():
        proj = project_gaussians(params[0], params[1], params[2], cam)
        bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, cam.width, cam.height)
        return bins.flatten_ids.numel() / max(1, int((proj.radii > 0).sum()))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(scene: str, backend: str, which: str, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    params, cam = make_scene(*SCENES[scene])
    params = [p.requires_grad_() for p in params]
    if backend == "cpu":
        from moegs.render import _cpu

        if not _cpu.available():
            raise SystemExit(f"cpu backend unavailable: {_cpu.build_error()}")

    def step():
        out = rasterize(*params[:5], cam, extras=params[5], backend=backend)
        if which == "forward+backward":
            loss = out.color.sum() + out.alpha.sum() + out.depth.sum() + out.extras.sum()
            loss.backward()
            for p in params:
                p.grad = None

    rss0 = _rss_mb()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mb": peak, "delta_mb": peak - rss0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (after one warm-up)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / OpenMP threads")
    ap.add_argument("--worker", nargs=3, metavar=("SCENE", "BACKEND", "PASS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads)))
        return

    from moegs.render import _cpu

    if not _cpu.available():  # build once here, outside every timed subprocess
        raise SystemExit(f"cpu backend unavailable: {_cpu.build_error()}")
    print(f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    results = {}
    for scene in SCENES:
        params, cam = make_scene(*SCENES[scene])
        print(f"{scene}: {SCENES[scene][0]} Gaussians, {tiles_per_gaussian(params, cam):.2f} tiles per visible Gaussian")
        for backend in BACKENDS:
            for which in PASSES:
                cmd = [sys.executable, __file__, "--worker", scene, backend, which,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[scene, backend, which] = json.loads(out.strip().splitlines()[-1])

    header = f"{'scene':<13}{'pass':<18}{'cpu ms':>9}{'torch ms':>10}{'speed-up':>10}" \
             f"{'cpu peak/Δ MB':>16}{'torch peak/Δ MB':>18}"
    print(header)
    print("-" * len(header))
    for scene in SCENES:
        for which in PASSES:
            c, t = results[scene, "cpu", which], results[scene, "torch", which]
            print(f"{scene:<13}{which:<18}{1e3 * c['median_s']:>9.1f}{1e3 * t['median_s']:>10.1f}"
                  f"{t['median_s'] / c['median_s']:>9.1f}x"
                  f"{c['peak_mb']:>10.0f} /{c['delta_mb']:>4.0f}{t['peak_mb']:>12.0f} /{t['delta_mb']:>4.0f}")


if __name__ == "__main__":
    main()
