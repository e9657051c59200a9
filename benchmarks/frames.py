"""Frame-access benchmark: random training frames from the lazy video decoder against the frame store.

Generates an N3V-layout scene (``camNN.mp4`` + ``poses_bounds.npy``; textured
content panning over time, H.264 yuv420p with a long GOP, as many encoders write
it), loads it through ``moegs.data.load_scene`` with ``DataConfig.frame_store``
``"lazy"`` and ``"store"``, and reports per mode:

* ``ms/frame``: mean and median wall time to get the ``[H, W, 3]`` uint8 frame of a
  random training view through the scene's frame cache (what ``Scene.image`` does
  first; the access pattern of training), after the scene is loaded; ``+ to tensor``
  adds ``Scene.image``'s conversion to a float tensor (the same for both modes);
* ``build s``: the store's first build (every video decoded once, in order);
  ``reuse`` is a second process that finds the store built, ``cold`` a third one that
  first evicts the store files from the page cache (``posix_fadvise``), so its reads
  come from the disk;
* ``peak RSS``: the process's peak resident set size (``VmHWM``), build included.

Each mode runs in its own process, so peaks do not mix. The generated scene is
cached under ``--workdir`` (default ``$MOEGS_CACHE_DIR/bench/frames``, i.e.
``~/.cache/moegs/bench/frames``), keyed by the generation flags; the store is built
in a fresh folder each run.

    python benchmarks/frames.py --cameras 4 --frames 60                      # small, a minute
    python benchmarks/frames.py --cameras 20 --frames 300 --encodes 4       # N3V scale (676x507 loaded)

Measured with the second command on 2 busy CPU cores (5700 training views, 50 random
frames): lazy 1238 ms per random frame (median 714), peak RSS 3.48 GiB; store 0.62 ms
(median 0.27) once built, 3.8 ms with the page cache evicted, first build 126 s for
6000 frames (5.75 GiB on disk), peak RSS 0.35 GiB. Scene.image's conversion of the
frame to a float tensor adds ~10 ms in both modes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from moegs.cameras import Camera, look_at  # noqa: E402
from moegs.data import DataConfig, load_scene  # noqa: E402
from moegs.data.n3v import poses_bounds  # noqa: E402
from moegs.data.sfm import cache_dir  # noqa: E402
from moegs.data.video import write_video  # noqa: E402
from moegs.io import atomic_path, write_json  # noqa: E402


def textured_frames(width: int, height: int, frames: int, seed: int):
    """``frames`` ``[height, width, 3]`` uint8 frames: a multi-scale random texture panning
    diagonally (2 px/frame) with a drifting brightness and sensor-like noise (which keeps the
    bitrate near a real capture's), generated one at a time."""
    rng = np.random.default_rng(seed)
    pad = 2 * frames + 8
    W, H = width + pad, height + pad
    tex = np.zeros((H, W, 3), np.float32)
    for cells, weight in ((8, 0.5), (40, 0.3), (200, 0.2)):
        small = (rng.uniform(0, 255, (max(2, H * cells // W), cells, 3))).astype(np.uint8)
        tex += weight * np.asarray(Image.fromarray(small).resize((W, H), Image.BICUBIC), np.float32)
    for t in range(frames):
        crop = tex[2 * t : 2 * t + height, 2 * t : 2 * t + width]
        noise = rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)
        yield np.clip(crop * (0.9 + 0.1 * np.sin(t / 15)) + noise, 0, 255).astype(np.uint8)


def generate(root: Path, args: argparse.Namespace) -> Path:
    """Write (or reuse) the N3V-layout scene for ``args`` under ``root``; returns its folder.

    ``args.encodes`` distinct videos are encoded (cached in ``root/videos_<settings>``); camera ``c``
    gets a copy of video ``c % encodes`` (its own file: decoding and the store treat it as any other).
    """
    encodes = min(args.encodes or args.cameras, args.cameras)
    settings = (args.frames, args.width, args.height, args.gop, args.crf, args.preset, 2)  # 2: content version
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
    scene = root / f"n3v_{args.cameras}x{args.frames}_{args.width}x{args.height}_gop{args.gop}_{key}_e{encodes}"
    if (scene / "complete.json").is_file():
        return scene
    pool = root / f"videos_{key}"
    todo = [c for c in range(encodes) if not (pool / f"c{c:02d}.mp4").is_file()]
    with tqdm(total=len(todo) * args.frames, desc="encoding videos", unit="frame", dynamic_ncols=True) as bar:
        for c in todo:
            def counted(frames):
                for fr in frames:
                    bar.update(1)
                    yield fr

            write_video(pool / f"c{c:02d}.mp4", counted(textured_frames(args.width, args.height, args.frames, seed=c)),
                        fps=30, crf=args.crf, keyframe_interval=args.gop, preset=args.preset)
    cams = []
    for c in range(args.cameras):
        a = 0.8 * (c / max(1, args.cameras - 1) - 0.5)
        eye = torch.tensor([4.0 * np.sin(a), 0.0, -4.0 * np.cos(a)])
        f = 0.8 * args.width
        cams.append(Camera(look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])), fx=f, fy=f, cx=args.width / 2,
                           cy=args.height / 2, width=args.width, height=args.height, near=0.5, far=20.0))
        with atomic_path(scene / f"cam{c:02d}.mp4", suffix=".mp4") as tmp:
            shutil.copyfile(pool / f"c{c % encodes:02d}.mp4", tmp)
    np.save(scene / "poses_bounds.npy", poses_bounds(cams))
    write_json(scene / "complete.json", {"cameras": args.cameras, "frames": args.frames, "distinct_videos": encodes})
    return scene


def peak_rss_gib() -> float:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` would inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(scene: Path, mode: str, store: Path, samples: int, downscale: float, seed: int) -> dict:
    """Load ``scene`` with frame_store ``mode``, read ``samples`` random training views; timings and peak RSS."""
    cfg = DataConfig(format="n3v", downscale=downscale, frame_store="store" if mode == "cold" else mode, frame_store_dir=str(store),
                     points="random", num_random_points=1000)
    t0 = time.perf_counter()
    s = load_scene(scene, cfg)
    load_s = time.perf_counter() - t0
    build_s = 0.0
    if mode in ("store", "cold"):
        st = s.train_views[0].source.store
        t0 = time.perf_counter()
        st.ensure()
        build_s = time.perf_counter() - t0
        built = st.built
    if mode == "cold":  # evict the store files from the page cache: reads come from the disk
        for entry in st.entries:
            fd = os.open(entry.file, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    rng = np.random.default_rng(seed)
    frame_ms, image_ms = [], []
    for i in rng.integers(0, len(s.train_views), samples):
        v = s.train_views[int(i)]
        t0 = time.perf_counter()
        s.cache.get(v.source.key, v.source.load)  # the frame, as Scene.image gets it
        t1 = time.perf_counter()
        s.image(v)  # now from the cache: the conversion to a float tensor
        frame_ms.append(1e3 * (t1 - t0))
        image_ms.append(1e3 * (time.perf_counter() - t0))
    out = {"mode": mode, "load_s": load_s, "build_s": build_s, "ms_mean": statistics.fmean(frame_ms),
           "ms_median": statistics.median(frame_ms), "image_ms_mean": statistics.fmean(image_ms), "peak_rss_gib": peak_rss_gib(),
           "resolution": s.resolution(), "train_views": len(s.train_views)}
    if mode in ("store", "cold"):
        out["videos_built"] = built
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--frames", type=int, default=60, help="frames per video")
    p.add_argument("--width", type=int, default=1352, help="video width (the loaded width is width / downscale)")
    p.add_argument("--height", type=int, default=1014)
    p.add_argument("--downscale", type=float, default=2.0, help="loader downscale (N3V's default is 2)")
    p.add_argument("--gop", type=int, default=250, help="keyframe interval (x264's default 250)")
    p.add_argument("--crf", type=int, default=20)
    p.add_argument("--preset", default="veryfast", help="x264 preset of the generated videos")
    p.add_argument("--encodes", type=int, default=None,
                   help="distinct videos to encode (default: one per camera); the other cameras get copies")
    p.add_argument("--samples", type=int, default=30, help="random frames timed per mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where the scene and the store go (default: user cache)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scene", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.scene, args.child, args.store, args.samples, args.downscale, args.seed)))
        return

    root = args.workdir or cache_dir() / "bench" / "frames"
    t0 = time.perf_counter()
    scene = generate(root, args)
    print(f"scene: {scene} ({args.cameras} cameras x {args.frames} frames, {args.width}x{args.height}, GOP {args.gop}, "
          f"{min(args.encodes or args.cameras, args.cameras)} distinct videos; "
          f"ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    store = root / "store"
    shutil.rmtree(store, ignore_errors=True)
    rows = []
    for mode in ("lazy", "store", "store", "cold"):  # the later runs find the store built
        cmd = [sys.executable, __file__, "--child", mode, "--scene", str(scene), "--store", str(store),
               "--samples", str(args.samples), "--downscale", str(args.downscale), "--seed", str(args.seed)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        if mode == "store" and res["videos_built"] == 0:
            res["mode"] = "store (reuse)"
        elif mode == "cold":
            res["mode"] = "store (cold)"
        rows.append(res)
        print(json.dumps(res), flush=True)
    size = sum(f.stat().st_size for f in store.glob("*.npy")) / 2**30
    shutil.rmtree(store, ignore_errors=True)
    w, h = rows[0]["resolution"]
    print(f"\nloaded at {w}x{h}, {rows[0]['train_views']} training views, {args.samples} random frames; store {size:.2f} GiB")
    print(f"{'mode':<14} {'ms/frame mean':>13} {'median':>8} {'+ to tensor':>11} {'build s':>8} {'peak RSS GiB':>12}")
    for r in rows:
        print(f"{r['mode']:<14} {r['ms_mean']:>13.2f} {r['ms_median']:>8.2f} {r['image_ms_mean']:>11.2f} "
              f"{r['build_s']:>8.1f} {r['peak_rss_gib']:>12.2f}")
    print(f"random access speed-up: {rows[0]['ms_mean'] / rows[2]['ms_mean']:.0f}x")


if __name__ == "__main__":
    main()
