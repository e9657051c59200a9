"""The Technicolor loader and its scene writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moegs.cameras import Camera, look_at
from moegs.data import DataConfig, load_scene, technicolor


def _rig(n: int, size=(16, 12)) -> list[Camera]:
    """``n`` cameras on a 4-wide grid looking down +z-ish at the origin, distinct intrinsics."""
    cams = []
    for i in range(n):
        eye = torch.tensor([0.3 * (i % 4) - 0.45, 0.3 * (i // 4) - 0.45, -4.0])
        w2c = look_at(eye, torch.tensor([0.0, 0.0, 0.0]), up=torch.tensor([0.0, -1.0, 0.0]))
        cams.append(Camera(w2c, fx=20.0 + i, fy=(20.0 + i) * 1.01, cx=8.0 + 0.1 * i, cy=6.0 - 0.1 * i, width=size[0], height=size[1]))
    return cams


def _frames(n_cams: int, n_frames: int, size=(16, 12)) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n_frames)] for _ in range(n_cams)]


def test_written_scene_is_recovered(tmp_path):
    cams, frames = _rig(12), _frames(12, 4)
    root = technicolor.write_technicolor_scene(tmp_path / "Birthday", cams, frames, first_frame=1)
    assert (root / "Birthday_undist_00001_00.png").is_file() and (root / "Birthday_undist_00004_11.png").is_file()
    assert technicolor.detect(root)
    scene = load_scene(root, DataConfig(format="technicolor", num_random_points=50))
    assert scene.format == "technicolor" and scene.num_cameras == 12
    assert {v.camera_id for v in scene.test_views} == {10}  # STG's Technicolor test camera
    assert len(scene.train_views) == 11 * 4 and len(scene.test_views) == 4
    assert scene.times == pytest.approx([0, 1 / 3, 2 / 3, 1])
    for v in scene.views:
        ref = cams[v.camera_id]
        np.testing.assert_allclose(v.camera.world_to_camera.numpy(), ref.world_to_camera.numpy(), atol=1e-5)
        assert (v.camera.fx, v.camera.fy, v.camera.cx, v.camera.cy) == pytest.approx((ref.fx, ref.fy, ref.cx, ref.cy))
        np.testing.assert_array_equal((scene.image(v).numpy() * 255).round(), frames[v.camera_id][v.frame])
    sub = load_scene(root, DataConfig(format="technicolor", frame_step=2, downscale=2, test_cameras=(0, 1), num_random_points=50))
    assert sub.times == [0.0, 1.0] and {v.camera_id for v in sub.test_views} == {0, 1}
    assert sub.resolution() == (8, 6) and sub.train_views[0].camera.fx == pytest.approx(cams[2].fx / 2)
    assert sub.image(sub.train_views[0]).shape == (6, 8, 3)


def test_parameter_columns_by_hand(tmp_path):
    """A file written by hand: ``f cu cv ar sk qw qx qy qz tx ty tz`` with a world-to-camera pose."""
    root = tmp_path / "Hand"
    root.mkdir()
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)  # 90 degrees about the camera y axis
    (root / "cameras_parameters.txt").write_text(
        "f cu cv ar sk qw qx qy qz tx ty tz\n"
        "100 8 6 1 0 1 0 0 0 0 0 5\n"
        f"50 8 6 2 0.5 {c} 0 {s} 0 0 0 4\n"
    )
    img = np.zeros((12, 16, 3), np.uint8)
    for cam in (0, 1):
        from PIL import Image

        Image.fromarray(img).save(root / f"Hand_undist_00000_{cam:02d}.png")
    scene = load_scene(root, DataConfig(format="technicolor", test_cameras=(1,), num_random_points=10))
    cam0, cam1 = scene.train_views[0].camera, scene.test_views[0].camera
    uv, z = cam0.project(torch.tensor([1.0, 0.5, 0.0]))  # camera frame (1, 0.5, 5)
    np.testing.assert_allclose(uv.numpy(), [8 + 100 / 5, 6 + 50 / 5], atol=1e-4)
    assert (cam1.fx, cam1.fy, cam1.metadata["skew"]) == (50.0, 100.0, 0.5)
    # R_y(90): world x -> camera -z, world z -> camera x; then + (0, 0, 4).
    uv, z = cam1.project(torch.tensor([0.0, 0.0, 1.0]))  # camera frame (1, 0, 4)
    np.testing.assert_allclose([*uv.numpy(), float(z)], [8 + 50 / 4, 6, 4], atol=1e-4)
    assert scene.times == [0.0]
