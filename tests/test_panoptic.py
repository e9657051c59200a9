"""Panoptic (Dynamic3DGS) loader against the real ``panoptic_basketball`` scene and broken copies.

The shared copy lists 150 timesteps but ships only the first 10 on disk.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image

from moegs.data import DataConfig, load_scene, panoptic
from moegs.data.scene import Scene
from moegs.errors import ConfigError, DataError


def _load(root: Path, config: DataConfig | None = None) -> tuple[Scene, list[warnings.WarningMessage]]:
    """The scene and every MissingFramesWarning its loading raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = panoptic.load(root, config or DataConfig())
    return scene, [w for w in caught if issubclass(w.category, panoptic.MissingFramesWarning)]


def _meta(root: Path, split: str) -> dict:
    return json.loads((root / f"{split}_meta.json").read_text())


def _present_timesteps(root: Path) -> int:
    """Timesteps whose listed images (both splits) all exist, counted independently of the loader."""
    metas = [_meta(root, s) for s in ("train", "test")]
    return sum(all((root / "ims" / fn).is_file() for m in metas for fn in m["fn"][t]) for t in range(len(metas[0]["fn"])))


@pytest.fixture(scope="module")
def root() -> Path:
    return data_path("panoptic_basketball")


@pytest.fixture(scope="module")
def loaded(root: Path) -> tuple[Scene, list[warnings.WarningMessage]]:
    return _load(root, DataConfig(points="random", num_random_points=20_000))


@pytest.fixture(scope="module")
def scene(loaded) -> Scene:
    return loaded[0]


def _linked_copy(src: Path, dst: Path, with_seg: bool = False) -> Path:
    """A copy of scene ``src`` (jsons copied, images symlinked) in ``dst``."""
    dst.mkdir(parents=True)
    for name in ("train_meta.json", "test_meta.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    for folder in ("ims", "seg") if with_seg else ("ims",):
        for f in (src / folder).rglob("*"):
            if f.is_file():
                out = dst / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.symlink_to(f)
    return dst


def _rewrite(dst: Path, split: str, edit) -> None:
    p = dst / f"{split}_meta.json"
    meta = json.loads(p.read_text())
    edit(meta)
    p.write_text(json.dumps(meta))


def test_detect(root: Path, tmp_path: Path) -> None:
    assert panoptic.detect(root)
    assert not panoptic.detect(tmp_path)


def test_missing_frames_warning_once_with_counts(root: Path, loaded) -> None:
    scene, caught = loaded
    listed = len(_meta(root, "train")["fn"])
    present = _present_timesteps(root)
    assert present < listed
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert f"lists {listed} timesteps" in msg and f"only {present} are complete" in msg
    assert scene.info["timesteps_listed"] == listed
    assert scene.info["timesteps_present"] == scene.info["timesteps_loaded"] == present


def test_views_match_json(root: Path, scene: Scene) -> None:
    present = _present_timesteps(root)
    for views, split in ((scene.train_views, "train"), (scene.test_views, "test")):
        meta = _meta(root, split)
        expected = [(t, c) for t in range(present) for c in range(len(meta["fn"][t]))]
        assert len(views) == len(expected)
        for v, (t, c) in zip(views, expected):
            cam = v.camera
            assert v.frame == t and v.camera_id == meta["cam_id"][t][c]
            assert cam.name == meta["fn"][t][c].rsplit(".", 1)[0]
            assert (cam.width, cam.height) == (meta["w"], meta["h"])
            k = np.array(meta["k"][t][c])
            assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
            np.testing.assert_allclose(cam.world_to_camera.numpy(), np.array(meta["w2c"][t][c]), atol=1e-6)
    train_ids = set(_meta(root, "train")["cam_id"][0])
    test_ids = set(_meta(root, "test")["cam_id"][0])
    assert {v.camera_id for v in scene.train_views} == train_ids
    assert {v.camera_id for v in scene.test_views} == test_ids


def test_near_plane_from_rig(root: Path, scene: Scene) -> None:
    """Each camera clips at a third of its distance to the point nearest every optical axis of the rig
    (least squares, from the json's w2c), at least 0.2; ``DataConfig.near`` sets one value."""
    w2c = {}
    for split in ("train", "test"):
        meta = _meta(root, split)
        for t_w2c, t_ids in zip(meta["w2c"], meta["cam_id"]):
            w2c.update({c: np.array(m, np.float64) for c, m in zip(t_ids, t_w2c)})
    centers = {c: -m[:3, :3].T @ m[:3, 3] for c, m in w2c.items()}
    axes = {c: m[2, :3] for c, m in w2c.items()}
    A = sum(np.eye(3) - np.outer(axes[c], axes[c]) for c in w2c)
    b = sum((np.eye(3) - np.outer(axes[c], axes[c])) @ centers[c] for c in w2c)
    look_at = np.linalg.solve(A, b)
    for v in scene.views:
        expected = max(0.2, np.linalg.norm(centers[v.camera_id] - look_at) / 3)
        assert v.camera.near == pytest.approx(expected, rel=1e-4)
    assert min(v.camera.near for v in scene.views) > 0.5  # the basketball dome: radius about 2.8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", panoptic.MissingFramesWarning)
        fixed = load_scene(root, DataConfig(near=0.5, max_frames=1))
        assert {v.camera.near for v in fixed.views} == {0.5}
        for bad in (0.0, -1.0, float("nan"), 1e9):
            with pytest.raises(ConfigError, match="near"):
                load_scene(root, DataConfig(near=bad, max_frames=1))


def test_times_over_loaded_frames(root: Path, scene: Scene) -> None:
    n = _present_timesteps(root)
    assert scene.times == pytest.approx([i / (n - 1) for i in range(n)])
    for v in scene.views:
        assert v.time == pytest.approx(v.frame / (n - 1))


def test_pixels(root: Path, scene: Scene) -> None:
    for v in (scene.train_views[0], scene.train_views[-1], scene.test_views[3]):
        expected = np.asarray(Image.open(root / "ims" / f"{v.camera.name}.jpg").convert("RGB"), dtype=np.float32) / 255.0
        np.testing.assert_array_equal(scene.image(v).numpy(), expected)


def test_downscale(root: Path, scene: Scene) -> None:
    half, _ = _load(root, DataConfig(downscale=2, max_frames=1, num_random_points=100))
    v, full = half.train_views[5], scene.train_views[5]
    assert (v.camera.width, v.camera.height) == (full.camera.width // 2, full.camera.height // 2)
    assert v.camera.fx == pytest.approx(full.camera.fx / 2) and v.camera.cy == pytest.approx(full.camera.cy / 2)
    f = np.asarray(Image.open(root / "ims" / f"{v.camera.name}.jpg"), dtype=np.float64) / 255.0
    h, w, _ = f.shape
    expected = f.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(half.image(v).double().numpy(), expected, atol=0.51 / 255.0 + 1e-6)


def test_silhouettes_agree(root: Path, scene: Scene) -> None:
    """OpenCV convention, checked across views: points inside the people's visual hull (the seg
    masks of all training cameras at frame 0) exist with the loaded cameras, and vanish when the
    cameras' y/z axes are flipped (the OpenGL reading)."""
    views = [v for v in scene.train_views if v.frame == 0]
    masks = [torch.from_numpy(np.array(Image.open(root / "seg" / f"{v.camera.name}.png")) > 0) for v in views]
    center = panoptic.axes_center([v.camera for v in views])
    pts = center + 1.5 * (2 * torch.rand(300_000, 3, generator=torch.Generator().manual_seed(0)) - 1)

    def hull_size(flip: bool) -> int:
        count = torch.zeros(len(pts), dtype=torch.long)
        for v, m in zip(views, masks):
            cam = v.camera
            if flip:
                cam = replace(cam, world_to_camera=torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])) @ cam.world_to_camera)
            uv, z = cam.project(pts)
            u, w = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            valid = (z > 0) & (u >= 0) & (u < cam.width) & (w >= 0) & (w < cam.height)
            hit = torch.zeros(len(pts), dtype=torch.bool)
            hit[valid] = m[w[valid], u[valid]]
            count += hit.long()
        return int((count >= len(views) - 1).sum())

    good = hull_size(False)
    assert good >= 50
    assert hull_size(True) < good / 20


def test_random_points_land_in_images(scene: Scene) -> None:
    assert scene.points.shape == scene.point_colors.shape == (20_000, 3)
    assert "random" in scene.info["initial_points"]
    fractions = []
    for v in scene.views[::5]:
        uv, z = v.camera.project(scene.points)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < v.camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < v.camera.height)
        fractions.append(float(inside.float().mean()))
    assert min(fractions) > 0.3 and float(np.mean(fractions)) > 0.5


def test_point_cloud_file(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(size=(500, 3)), rng.random((500, 3)), rng.integers(0, 2, (500, 1))], axis=1)
    np.savez(dst / "init_pt_cld.npz", data=data)
    scene, _ = _load(dst, DataConfig(max_frames=1))
    np.testing.assert_allclose(scene.points.numpy(), data[:, :3], atol=1e-6)
    np.testing.assert_allclose(scene.point_colors.numpy(), data[:, 3:6], atol=1e-6)
    assert "init_pt_cld.npz" in scene.info["initial_points"]

    np.savez(dst / "init_pt_cld.npz", data=data[:, :5])
    with pytest.raises(DataError, match="init_pt_cld.npz"):
        _load(dst, DataConfig(max_frames=1))


def test_frame_selection(root: Path) -> None:
    scene, caught = _load(root, DataConfig(frame_step=2, max_frames=3, num_random_points=100))
    assert len(caught) == 1
    assert sorted({v.frame for v in scene.views}) == [0, 2, 4]
    assert scene.times == pytest.approx([0.0, 0.5, 1.0])
    assert scene.info["timesteps_loaded"] == 3


def test_gap_and_complete_copies(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    meta = _meta(root, "train")
    (dst / "ims" / meta["fn"][4][2]).unlink()  # one image of timestep 4 lost
    scene, caught = _load(dst, DataConfig(num_random_points=100))
    n = _present_timesteps(root)
    assert len(caught) == 1 and f"only {n - 1} are complete" in str(caught[0].message)
    assert sorted({v.frame for v in scene.views}) == [t for t in range(n) if t != 4]
    for v in scene.views:
        assert v.time == pytest.approx(v.frame / (n - 1))

    for split in ("train", "test"):
        _rewrite(dst, split, lambda m: m.update({k: m[k][:4] for k in ("k", "w2c", "fn", "cam_id")}))
    scene, caught = _load(dst, DataConfig(num_random_points=100))
    assert caught == [] and scene.info["timesteps_listed"] == scene.info["timesteps_loaded"] == 4


def test_test_cameras_pool_both_files(root: Path) -> None:
    scene, _ = _load(root, DataConfig(test_cameras=(0, 1), max_frames=2, num_random_points=100))
    assert {v.camera_id for v in scene.test_views} == {0, 1}
    assert 0 not in {v.camera_id for v in scene.train_views} and 10 in {v.camera_id for v in scene.train_views}
    with pytest.raises(ConfigError, match="99"):
        _load(root, DataConfig(test_cameras=(99,), max_frames=1))


def test_missing_json(root: Path, tmp_path: Path) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    (dst / "test_meta.json").unlink()
    with pytest.raises(DataError, match="test_meta.json"):
        panoptic.load(dst, DataConfig())
    (dst / "train_meta.json").unlink()
    assert not panoptic.detect(dst)
    with pytest.raises(DataError, match="train_meta.json"):
        panoptic.load(dst, DataConfig())


def _nan_w2c(m: dict) -> None:
    m["w2c"][3][1][0][2] = float("nan")


@pytest.mark.parametrize(
    ("split", "edit", "words"),
    [
        ("train", lambda m: m.pop("w2c"), "'w2c'"),
        ("test", lambda m: m.pop("k"), "'k'"),
        ("train", _nan_w2c, "NaN"),
        ("test", lambda m: m["fn"].pop(), "one entry per timestep"),
        ("train", lambda m: m["k"][0][3].pop(), "3x3"),
    ],
)
def test_bad_json_raises(root: Path, tmp_path: Path, split: str, edit, words: str) -> None:
    dst = _linked_copy(root, tmp_path / "scene")
    _rewrite(dst, split, edit)
    with pytest.raises(DataError, match=f"{split}_meta.json") as e:
        panoptic.load(dst, DataConfig(num_random_points=100))
    assert words in str(e.value)


def test_no_images_and_undecodable_image(root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("train_meta.json", "test_meta.json"):
        (empty / name).write_bytes((root / name).read_bytes())
    with pytest.raises(DataError, match="ims"):
        panoptic.load(empty, DataConfig())

    dst = _linked_copy(root, tmp_path / "scene")
    bad = _meta(root, "train")["fn"][1][6]
    (dst / "ims" / bad).unlink()
    (dst / "ims" / bad).write_bytes(b"\xff\xd8\xff" + b"garbage" * 20)
    scene, _ = _load(dst, DataConfig(max_frames=2, num_random_points=100))
    view = next(v for v in scene.train_views if v.frame == 1 and v.camera.name == bad.rsplit(".", 1)[0])
    with pytest.raises(DataError, match=bad.split("/")[-1]) as e:
        scene.image(view)
    assert bad.split("/")[0] in str(e.value)
