"""D-NeRF loader against the real ``dnerf_mutant`` scene and broken copies of it."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image

from moegs.data import DataConfig, dnerf, load_scene
from moegs.data.scene import Scene
from moegs.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root() -> Path:
    return data_path("dnerf_mutant")


@pytest.fixture(scope="module")
def scene(root: Path) -> Scene:
    return dnerf.load(root, DataConfig())


def _json(root: Path, split: str) -> dict:
    return json.loads((root / f"transforms_{split}.json").read_text())


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of scene ``src`` in ``dst`` whose files are symlinks (replace one before editing it)."""
    for f in src.rglob("*"):
        if f.is_file():
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(f)
    return dst


def _rewrite_json(dst: Path, split: str, edit) -> None:
    p = dst / f"transforms_{split}.json"
    meta = json.loads(p.read_text())
    edit(meta)
    p.unlink()
    p.write_text(json.dumps(meta))


def test_detect(root: Path, tmp_path: Path) -> None:
    assert dnerf.detect(root)
    assert not dnerf.detect(tmp_path)


def test_splits_match_json(root: Path, scene: Scene) -> None:
    train, test, val = _json(root, "train"), _json(root, "test"), _json(root, "val")
    assert len(scene.train_views) == len(train["frames"])
    assert len(scene.test_views) == len(test["frames"])
    assert scene.info["val_frames_unused"] == len(val["frames"])
    for views, meta in ((scene.train_views, train), (scene.test_views, test)):
        assert [v.time for v in views] == [float(f["time"]) for f in meta["frames"]]
        assert [v.camera.name for v in views] == [str(Path(f["file_path"])) for f in meta["frames"]]
        assert all(v.camera_id == 0 for v in views)
    assert scene.format == "dnerf" and scene.name == "dnerf_mutant"
    assert torch.equal(scene.background, torch.ones(3))


def test_intrinsics_and_centres(root: Path, scene: Scene) -> None:
    w_full, h_full = Image.open(root / "train" / "r_000.png").size
    for views, split in ((scene.train_views, "train"), (scene.test_views, "test")):
        meta = _json(root, split)
        for v, fr in zip(views, meta["frames"]):
            cam = v.camera
            assert (cam.width, cam.height) == (w_full // 2, h_full // 2)
            fx = 0.5 * cam.width / math.tan(0.5 * meta["camera_angle_x"])
            assert cam.fx == pytest.approx(fx, rel=1e-6) and cam.fy == pytest.approx(fx, rel=1e-6)
            assert (cam.cx, cam.cy) == pytest.approx((cam.width / 2, cam.height / 2))
            c2w = torch.tensor(fr["transform_matrix"], dtype=torch.float32)
            torch.testing.assert_close(cam.center, c2w[:3, 3], atol=1e-4, rtol=0)
            assert 0 < cam.near < cam.far


def test_opencv_convention(scene: Scene) -> None:
    """The object centre (world origin) projects to the image centre in front of every camera, and
    world up (+z in Blender) points up in the image (-v) wherever the camera is not looking straight down."""
    origin, up = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 0.3]])
    for v in scene.views:
        cam = v.camera
        uv, z = cam.project(origin)
        assert z.item() > 0
        assert (uv[0] - torch.tensor([cam.cx, cam.cy])).abs().max() < 0.05 * cam.width
        if abs(float(cam.R[2, 2])) < 0.95:
            assert cam.project(up)[0][0, 1] < uv[0, 1]


def test_silhouettes_agree(root: Path, scene: Scene) -> None:
    """Multi-view check: points inside the object's visual hull (alpha > 0.5 in all early views)
    exist with the loaded cameras and vanish when the y/z axes are left in the OpenGL convention."""
    views = [v for v in scene.train_views if v.time < 0.07]
    masks = [torch.from_numpy(np.array(Image.open(root / f"{v.camera.name}.png").reduce(2))[..., 3] > 127) for v in views]
    pts = (torch.rand(100_000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 1.3

    def inside_all(flip: bool) -> int:
        ok = torch.ones(len(pts), dtype=torch.bool)
        for v, m in zip(views, masks):
            cam = v.camera
            if flip:
                cam = replace(cam, world_to_camera=torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])) @ cam.world_to_camera)
            uv, z = cam.project(pts)
            u, w = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            valid = (z > 0) & (u >= 0) & (u < cam.width) & (w >= 0) & (w < cam.height)
            hit = torch.zeros(len(pts), dtype=torch.bool)
            hit[valid] = m[w[valid], u[valid]]
            ok &= hit
        return int(ok.sum())

    assert len(views) >= 8
    good, flipped = inside_all(False), inside_all(True)
    assert good > 200
    assert flipped < good / 20


@pytest.mark.parametrize("white", [True, False])
def test_pixels_are_file_over_background_downscaled(root: Path, white: bool) -> None:
    scene = dnerf.load(root, DataConfig(white_background=white))
    bg = 1.0 if white else 0.0
    assert torch.equal(scene.background, torch.full((3,), bg))
    for v in (scene.train_views[0], scene.train_views[77], scene.test_views[5]):
        f = np.asarray(Image.open(root / f"{v.camera.name}.png"), dtype=np.float64) / 255.0
        assert f.shape[-1] == 4
        comp = f[..., :3] * f[..., 3:] + bg * (1.0 - f[..., 3:])
        h, w, _ = comp.shape
        expected = comp.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        got = scene.image(v).double().numpy()
        assert got.shape == expected.shape == (v.camera.height, v.camera.width, 3)
        np.testing.assert_allclose(got, expected, atol=1.5 / 255.0)


def test_downscale_one_and_frame_selection(root: Path) -> None:
    full = dnerf.load(root, DataConfig(downscale=1, max_frames=2))
    assert full.resolution() == (800, 800)
    assert full.train_views[0].camera.fx == pytest.approx(0.5 * 800 / math.tan(0.5 * _json(root, "train")["camera_angle_x"]))
    assert full.image(full.train_views[0]).shape == (800, 800, 3)

    sub = dnerf.load(root, DataConfig(frame_step=3, max_frames=10))
    times = [float(f["time"]) for f in _json(root, "train")["frames"]]
    assert [v.frame for v in sub.train_views] == list(range(0, 30, 3))
    assert [v.time for v in sub.train_views] == [times[i] for i in range(0, 30, 3)]
    t_max = times[27]
    test_times = [float(f["time"]) for f in _json(root, "test")["frames"]]
    assert [v.time for v in sub.test_views] == [t for t in test_times if t <= t_max]


def test_random_points(root: Path) -> None:
    a = dnerf.load(root, DataConfig(num_random_points=5000, seed=3))
    b = dnerf.load(root, DataConfig(num_random_points=5000, seed=3))
    c = dnerf.load(root, DataConfig(num_random_points=5000, seed=4))
    assert a.points.shape == a.point_colors.shape == (5000, 3)
    assert a.points.abs().max() <= 1.3 and a.points.abs().max() > 1.2
    assert a.point_colors.min() >= 0 and a.point_colors.max() <= 1
    assert torch.equal(a.points, b.points) and not torch.equal(a.points, c.points)


def test_load_scene_with_forced_format(root: Path) -> None:
    scene = load_scene(root, DataConfig(format="dnerf", max_frames=3))
    assert scene.format == "dnerf" and len(scene.train_views) == 3


def test_time_normalisation(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")

    def scale(meta: dict) -> None:
        for f in meta["frames"]:
            f["time"] = 10.0 * f["time"] + 5.0

    for split in ("train", "test"):
        _rewrite_json(dst, split, scale)
    scene = dnerf.load(dst, DataConfig())
    expected = [float(f["time"]) for f in _json(root, "train")["frames"]]
    np.testing.assert_allclose([v.time for v in scene.train_views], expected, atol=1e-12)

    def drop_time(meta: dict) -> None:
        for f in meta["frames"]:
            del f["time"]

    for split in ("train", "test"):
        _rewrite_json(dst, split, drop_time)
    assert dnerf.load(dst, DataConfig()).times == [0.0]


def _broken(root: Path, tmp_path: Path, split: str, edit) -> Path:
    dst = _linked_copy(root, tmp_path / "scene")
    _rewrite_json(dst, split, edit)
    return dst


def test_missing_json(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    (dst / "transforms_test.json").unlink()
    with pytest.raises(DataError, match="transforms_test.json"):
        dnerf.load(dst, DataConfig())
    (dst / "transforms_train.json").unlink()
    assert not dnerf.detect(dst)
    with pytest.raises(DataError, match="transforms_train.json"):
        dnerf.load(dst, DataConfig())


@pytest.mark.parametrize(
    ("split", "edit", "words"),
    [
        ("train", lambda m: m.pop("camera_angle_x"), "camera_angle_x"),
        ("test", lambda m: m.pop("frames"), "frames"),
        ("train", lambda m: m["frames"][4].pop("transform_matrix"), "transform_matrix"),
        ("test", lambda m: m["frames"][2]["transform_matrix"][1].__setitem__(3, float("nan")), "NaN"),
        ("train", lambda m: m["frames"][9]["transform_matrix"][0].__setitem__(0, 3.0), "rigid"),
        ("train", lambda m: m["frames"][1].pop("time"), "time"),
    ],
)
def test_bad_json_raises(root: Path, tmp_path: Path, split: str, edit, words: str) -> None:
    dst = _broken(root, tmp_path, split, edit)
    with pytest.raises(DataError, match=f"transforms_{split}.json") as e:
        dnerf.load(dst, DataConfig())
    assert words in str(e.value)


def test_unparsable_json(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    (dst / "transforms_train.json").unlink()
    (dst / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    with pytest.raises(DataError, match="transforms_train.json"):
        dnerf.load(dst, DataConfig())


def test_missing_and_undecodable_images(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    (dst / "train" / "r_005.png").unlink()
    with pytest.raises(DataError, match="r_005.png"):
        dnerf.load(dst, DataConfig())
    shutil.copy(root / "train" / "r_005.png", dst / "train" / "r_005.png")
    (dst / "test" / "r_007.png").unlink()
    (dst / "test" / "r_007.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    scene = dnerf.load(dst, DataConfig())
    with pytest.raises(DataError, match="r_007.png"):
        scene.image(scene.test_views[7])
    scene.image(scene.test_views[6])  # the others still decode


@pytest.mark.parametrize("config", [DataConfig(downscale=0), DataConfig(frame_step=0), DataConfig(max_frames=0)])
def test_bad_config(root: Path, config: DataConfig) -> None:
    with pytest.raises(ConfigError):
        dnerf.load(root, config)
