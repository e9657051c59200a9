"""The N3V (DyNeRF) loader: LLFF pose conversion, lazy frames, split, times, initial points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_path
from test_video import gradient_frames

from moegs.cameras import look_at
from moegs.data import DataConfig, load_scene, n3v
from moegs.data.colmap import read_model
from moegs.data.video import write_video


def llff_rows(c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``[N, 17]`` poses_bounds rows written the way LLFF stores them, from OpenCV camera-to-world
    ``[N, 4, 4]`` (columns right, down, forward): LLFF columns are down, right, back, centre, (H, W, f)."""
    rows = []
    for m, (h, w, f), (near, far) in zip(c2w, hwf, bounds):
        right, down, forward, centre = m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3]
        mat = np.stack([down, right, -forward, centre, np.array([h, w, f])], axis=1)  # [3, 5]
        rows.append(np.concatenate([mat.ravel(), [near, far]]))
    return np.array(rows)


def write_n3v_scene(
    root: Path,
    c2w: np.ndarray,
    *,
    size: tuple[int, int] = (32, 24),
    hwf: np.ndarray | None = None,
    bounds: tuple[float, float] = (0.5, 20.0),
    frames: int = 6,
    names: list[str] | None = None,
    keyframe_interval: int = 4,
) -> list[list[np.ndarray]]:
    """A tiny N3V folder: one video per camera (distinct moving gradients) and poses_bounds.npy.
    Returns the frames written, ``[camera][frame] -> [H, W, 3]``."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(c2w)
    names = names or [f"cam{i:02d}" for i in range(n)]
    w, h = size
    hwf = np.tile([h, w, 30.0], (n, 1)) if hwf is None else hwf
    np.save(root / "poses_bounds.npy", llff_rows(c2w, hwf, np.tile(bounds, (n, 1))))
    content = []
    for i, name in enumerate(names):
        fr = gradient_frames(frames, h, w, seed=i)
        write_video(root / f"{name}.mp4", fr, fps=30, keyframe_interval=keyframe_interval)
        content.append(fr)
    return content


def ring_c2w(n: int, radius: float = 4.0) -> np.ndarray:
    """``[n, 4, 4]`` OpenCV camera-to-world of ``n`` cameras on an arc looking at the origin."""
    w2c = [look_at(torch.tensor([radius * np.cos(a), radius * np.sin(a), 0.7]), torch.zeros(3)) for a in np.linspace(0.2, 1.6, n)]
    return np.linalg.inv(np.stack([m.double().numpy() for m in w2c]))


def test_llff_conversion_recovers_opencv_cameras(tmp_path):
    c2w = ring_c2w(4)
    write_n3v_scene(tmp_path / "s", c2w, frames=2)
    assert n3v.detect(tmp_path / "s")
    scene = load_scene(tmp_path / "s", DataConfig(format="n3v", downscale=1, num_random_points=100))
    by_cam = {v.camera_id: v.camera for v in scene.views}
    for i in range(4):
        cam = by_cam[i]
        np.testing.assert_allclose(cam.world_to_camera.double().numpy(), np.linalg.inv(c2w[i]), atol=1e-5)
        assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (30.0, 30.0, 16.0, 12.0, 32, 24)
        assert (cam.near, cam.far) == (0.5, 20.0)
        # LLFF semantics alone: a point d along -back, a along right and b along down from the centre
        # projects to (cx + f a / d, cy + f b / d).
        row = np.load(tmp_path / "s" / "poses_bounds.npy")[i, :15].reshape(3, 5)
        down, right, back, centre = row[:, 0], row[:, 1], row[:, 2], row[:, 3]
        p = centre - 3.0 * back + 0.6 * right - 0.3 * down
        uv, z = cam.project(torch.tensor(p, dtype=torch.float32))
        np.testing.assert_allclose(uv.numpy(), [16 + 30 * 0.2, 12 - 30 * 0.1], atol=1e-4)
        assert float(z) == pytest.approx(3.0, abs=1e-5)
    llff = np.load(tmp_path / "s" / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    np.testing.assert_allclose(n3v.opencv_to_llff(n3v.llff_to_opencv(llff)), llff[:, :, :4], atol=1e-9)


def test_generated_scene_counts_times_split_and_cache_budget(tmp_path):
    content = write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=12)
    # Default downscale 2 halves 32x24.
    assert load_scene(tmp_path / "s", DataConfig(format="n3v", num_random_points=10)).resolution() == (16, 12)
    budget = 3 * 32 * 24 * 3  # three full-resolution frames
    cfg = DataConfig(format="n3v", downscale=1, frame_step=2, max_frames=5, cache_bytes=budget, num_random_points=10)
    scene = load_scene(tmp_path / "s", cfg)
    assert scene.format == "n3v" and scene.num_cameras == 3
    assert len(scene.train_views) == 10 and len(scene.test_views) == 5
    assert {v.camera_id for v in scene.test_views} == {0}
    assert scene.times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert scene.info["frames_per_video"] == {"cam00.mp4": 12, "cam01.mp4": 12, "cam02.mp4": 12}
    for v in sorted(scene.views, key=lambda v: (v.camera_id, v.frame)):
        img = (scene.image(v).numpy() * 255).round()
        expect = content[v.camera_id][2 * v.frame].astype(np.float64)
        d = np.abs(img - expect)
        assert d.mean() < 3.0 and d.max() < 24, (v.camera_id, v.frame, d.mean())
        assert scene.cache.nbytes <= budget
    readers = {v.source.reader for v in scene.views}
    # Time order is linear: no frame of 0..8 decoded twice (seeks skip to keyframes 4 and 8).
    assert len(readers) == 3 and all(5 <= r.decoded <= 9 for r in readers)


def test_reference_cameras_json_and_colmap_geometry(tmp_path):
    """poses_bounds.npy written from the independent N3V reference cameras (sear_steak) loads back to
    those cameras; their geometry matches the COLMAP reconstruction of flame_steak frame 0 up to a
    similarity: measured centre residual 0.16% of the rig radius, rotations within 0.19 deg, scale 1.0014."""
    ref = json.loads((data_path("n3v_sear_steak_cameras") / "n3d-sear-steak-reference-cameras.json").read_text())["cameras"]
    frame0 = data_path("n3v_flame_steak_frame0")
    c2w = np.tile(np.eye(4), (len(ref), 1, 1))
    for i, c in enumerate(ref):
        c2w[i, :3, :3], c2w[i, :3, 3] = c["rotation"], c["position"]
    hwf = np.array([[c["height"], c["width"], c["fx"]] for c in ref])
    root = tmp_path / "sear"
    write_n3v_scene(root, c2w, size=(32, 24), hwf=hwf, frames=1, names=[c["name"] for c in ref])
    (root / "sparse").symlink_to(frame0 / "sparse")  # points of the (other) flame_steak capture
    scene = load_scene(root, DataConfig(format="n3v", downscale=1))
    cams = {v.camera.name: v.camera for v in scene.views}
    for c in ref:
        cam = cams[c["name"]]
        np.testing.assert_allclose(cam.center.numpy(), c["position"], atol=1e-5)
        np.testing.assert_allclose(cam.camera_to_world[:3, :3].numpy(), c["rotation"], atol=1e-5)
        assert cam.fx == pytest.approx(c["fx"] * 32 / c["width"])
    assert scene.times == [0.0]

    model = read_model(frame0 / "sparse" / "0")
    by_name = {Path(im.name).stem: im for im in model.images.values()}
    src = np.array([-by_name[c["name"]].rotation.T @ by_name[c["name"]].tvec for c in ref])
    dst = np.array([cams[c["name"]].center.double().numpy() for c in ref])
    s, R, t = n3v.umeyama(src, dst)
    radius = np.linalg.norm(dst - dst.mean(0), axis=1).max()
    residual = np.linalg.norm(s * src @ R.T + t - dst, axis=1).max() / radius
    assert residual < 0.01, residual
    assert s == pytest.approx(1.0, abs=0.01)
    for c in ref:
        rel = cams[c["name"]].camera_to_world[:3, :3].double().numpy().T @ R @ by_name[c["name"]].rotation.T
        angle = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
        assert angle < 0.5, (c["name"], angle)
    # The loader used the same alignment for the COLMAP points.
    assert scene.info["points"].startswith("COLMAP model sparse/0, aligned on 5 cameras")
    np.testing.assert_allclose(scene.points.numpy(), s * model.points.xyz @ R.T + t, atol=1e-4)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(10, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    s, R, t = n3v.umeyama(src, 2.5 * src @ q.T + [1.0, -2.0, 3.0])
    assert s == pytest.approx(2.5) and np.allclose(R, q) and np.allclose(t, [1.0, -2.0, 3.0])


def test_random_points_lie_in_frusta(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=1, bounds=(1.0, 6.0))
    scene = load_scene(tmp_path / "s", DataConfig(format="n3v", num_random_points=300, seed=3))
    assert scene.points.shape == (300, 3) and scene.point_colors.shape == (300, 3)

    def inside(scene, near: float) -> bool:
        hit = torch.zeros(300, dtype=torch.bool)
        for cam in {v.camera_id: v.camera for v in scene.views}.values():
            uv, z = cam.project(scene.points)
            ok = (z > near - 1e-4) & (z < 6.0 + 1e-4) & (uv[:, 0] >= -1e-3) & (uv[:, 0] <= cam.width + 1e-3)
            hit |= ok & (uv[:, 1] >= -1e-3) & (uv[:, 1] <= cam.height + 1e-3)
        return bool(hit.all())

    assert inside(scene, 1.0) and not inside(scene, 3.0)
    again = load_scene(tmp_path / "s", DataConfig(format="n3v", num_random_points=300, seed=3))
    assert torch.equal(again.points, scene.points)
    # a near plane set by DataConfig.near clips the cameras and bounds the random points alike
    clipped = load_scene(tmp_path / "s", DataConfig(format="n3v", num_random_points=300, seed=3, near=3.0))
    assert {v.camera.near for v in clipped.views} == {3.0} and inside(clipped, 3.0)


def test_points_from_ply(tmp_path):
    from plyfile import PlyData, PlyElement

    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=1)
    v = np.array([(1.0, 2.0, 3.0, 255, 0, 0), (0.0, 0.5, -1.0, 0, 128, 255)],
                 dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "s" / "points3D.ply"))
    scene = load_scene(tmp_path / "s", DataConfig(format="n3v"))
    np.testing.assert_allclose(scene.points.numpy(), [[1, 2, 3], [0, 0.5, -1]])
    np.testing.assert_allclose(scene.point_colors.numpy(), [[1, 0, 0], [0, 128 / 255, 1]], atol=1e-6)
