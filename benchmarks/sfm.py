"""SfM benchmark on a generated capture with known geometry (``moegs.data.textured``).

1. SfM initial points with the true cameras: distance to the known surfaces, time.
2. ``moegs prepare`` on the same videos without their poses: camera rotation / centre errors after a
   similarity (Umeyama) alignment, focal length error, time.
3. With ``--steps N``: one expert trained on the original folder (true poses) and on the prepared one
   (SfM poses), both with initial points triangulated from their own poses (``points="sfm"``), same
   budget: test PSNR on the held-out camera cam00 of each.

    python benchmarks/sfm.py [--cameras 8] [--width 384] [--steps 1000] [--expert static] [--out DIR]
    python benchmarks/sfm.py --capture demo --width 160       # the same on the scene of `moegs demo`
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.data.n3v import umeyama  # noqa: E402
from moegs.data.prepare import prepare_videos  # noqa: E402
from moegs.data.synthetic import SyntheticConfig, generate_scene  # noqa: E402
from moegs.data.textured import surface_distance, write_blob_scene  # noqa: E402
from moegs.train import TrainConfig  # noqa: E402
from moegs.train.run import train_expert  # noqa: E402


def camera_errors(scene, true_cams) -> dict:
    """Largest rotation error (deg), centre error (% of the rig radius) and focal error (%) of ``scene``'s
    cameras against ``true_cams`` after the similarity mapping the centres best onto the true ones."""
    cams = {v.camera.name: v.camera for v in scene.views}
    est = np.stack([cams[c.name].center.double().numpy() for c in true_cams])
    true = np.stack([c.center.double().numpy() for c in true_cams])
    s, R, t = umeyama(est, true)
    radius = np.linalg.norm(true - true.mean(0), axis=1).max()
    rot = max(
        float(np.degrees(np.arccos(np.clip((np.trace(cams[c.name].R.double().numpy() @ R.T @ c.R.double().numpy().T) - 1) / 2, -1, 1))))
        for c in true_cams
    )
    return {
        "rotation_deg": rot,
        "centre_pct_radius": 100 * float(np.linalg.norm(s * est @ R.T + t - true, axis=1).max() / radius),
        "focal_pct": 100 * max(abs(cams[c.name].fx - c.fx) / c.fx for c in true_cams),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--width", type=int, default=384, help="image width (height is 3/4 of it)")
    p.add_argument("--steps", type=int, default=0, help="train an expert on both folders for this many steps (0: no)")
    p.add_argument("--expert", default="static")
    p.add_argument("--out", help="keep the generated folders here (default: a temporary folder)")
    p.add_argument("--capture", choices=("textured", "demo"), default="textured",
                   help="textured: the blob capture of moegs.data.textured (known surfaces, --cameras); demo: the "
                        "heterogeneous scene of `moegs demo` (its 10 cameras) rendered at --width")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moegs-sfm-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        original, videos = out / "original", out / "prepared"
        for d in (original, videos):
            shutil.rmtree(d, ignore_errors=True)
        if args.capture == "demo":
            gs, cams = None, None
            generate_scene(original, SyntheticConfig(width=args.width, height=args.width * 3 // 4))
        else:
            gs, cams = write_blob_scene(original, args.cameras, args.width, args.width * 3 // 4)
        videos.mkdir(parents=True)
        for f in original.glob("cam*.mp4"):
            shutil.copy(f, videos / f.name)
        cfg = DataConfig(downscale=1.0, points="sfm")

        t = time.perf_counter()
        scene = load_scene(original, cfg)
        sfm_s = time.perf_counter() - t
        if cams is None:  # the generated scene's true cameras, as its poses file gives them: one per video
            cams = list({v.camera.name: v.camera for v in scene.views}.values())
        if gs is not None:
            d = surface_distance(scene.points, gs)
            print(f"SfM points, true cameras: {len(scene.points)} points in {sfm_s:.1f} s; distance to the known "
                  f"surfaces: median {float(d.median()):.4f}, 90th percentile {float(d.quantile(0.9)):.4f}, "
                  f"{100 * float((d > 0.1).float().mean()):.2f} % beyond 0.1 (scene depth ~5)")
        else:
            print(f"SfM points, true cameras: {len(scene.points)} points in {sfm_s:.1f} s")

        t = time.perf_counter()
        summary = prepare_videos(videos, progress=False)
        prep_s = time.perf_counter() - t
        prepared = load_scene(videos, cfg)
        e = camera_errors(prepared, cams)
        print(f"moegs prepare: {len(summary['cameras'])} cameras, {summary['points']} points in {prep_s:.1f} s; "
              f"rotation error {e['rotation_deg']:.3f} deg, centre error {e['centre_pct_radius']:.3f} % of the rig radius, "
              f"focal error {e['focal_pct']:.2f} %")

        if args.steps > 0:
            for name, folder, sc in (("original", original, scene), ("prepared", videos, prepared)):
                tc = TrainConfig(expert=args.expert, steps=args.steps, checkpoint_every=10**9, log_every=max(1, args.steps // 10))
                tc.data.downscale = 1.0
                res = train_expert(sc, tc, out / f"run-{name}", progress=False)
                print(f"{args.expert}, {args.steps} steps on the {name} folder: test PSNR {res['test_psnr']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
