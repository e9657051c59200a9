"""HexPlane field benchmark: the ``grid_sample`` reference against the fused native sampler.

Times ``HexPlaneField`` alone (forward, and forward + backward of a random linear loss w.r.t. the
coordinates and every plane) for the expert's default configuration (the demo's) at a few Gaussian
counts. Coordinates are uniform in ``[-1, 1]``; medians over ``--repeats`` runs after one warm-up.

    python benchmarks/hexplane_field.py [--n 8000,30000] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from moegs.experts import _hexplane_cpu  # noqa: E402
from moegs.experts.hexplane import HexPlaneConfig, HexPlaneField  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="8000,30000", help="comma-separated Gaussian counts")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _hexplane_cpu.available():
        raise SystemExit(f"the compiled HexPlane sampler is unavailable: {_hexplane_cpu.build_error()}")
    cfg = HexPlaneConfig()
    field = HexPlaneField(cfg.feature_dim, tuple(cfg.resolution), tuple(cfg.multires), cfg.plane_init_low,
                          cfg.plane_init_high)
    print(f"HexPlaneField C={cfg.feature_dim} resolution={tuple(cfg.resolution)} multires={tuple(cfg.multires)}, "
          f"{torch.get_num_threads()} threads; ms, median of {args.repeats}\n")
    print("| N | torch fwd | native fwd | speed-up | torch fwd+bwd | native fwd+bwd | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.n.split(",")):
        coords = (torch.rand(n, 4) * 2 - 1).requires_grad_()
        w = torch.randn(n, field.out_dim)

        def fwd(backend: str) -> None:
            with torch.no_grad():
                field(coords, backend=backend)

        def fwd_bwd(backend: str) -> None:
            (field(coords, backend=backend) * w).sum().backward()

        row = []
        for fn in (fwd, fwd_bwd):
            ref, nat = (median_ms(lambda b=b: fn(b), args.repeats) for b in ("torch", "cpu"))
            row += [f"{ref:.2f}", f"{nat:.2f}", f"{ref / nat:.1f}x"]
        print(f"| {n} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
