"""SfM initial points (``moegs.data.sfm``, ``DataConfig.points``) and mirrored Dynamic3DGS captures."""

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

from moegs.cameras import Camera
from moegs.data import DataConfig, load_scene
from moegs.data import sfm as sfm_module
from moegs.data.config import SfmOptions
from moegs.data.n3v import poses_bounds, write_ply_points
from moegs.data.points import first_views
from moegs.data.textured import blob_gaussians, blob_rig, surface_distance, write_blob_scene
from moegs.data.video import write_video
from moegs.errors import ConfigError, DataError
from moegs.gaussians import GaussianSet


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """SfM results of this module go to one fresh folder (the compiled rasterizer stays in the user cache)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sfm_module, "cache_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="module")
def blob_root(tmp_path_factory) -> tuple[Path, GaussianSet, list[Camera]]:
    root = tmp_path_factory.mktemp("blob") / "scene"
    gs, cams = write_blob_scene(root)
    return root, gs, cams


def _cfg(**kw) -> DataConfig:
    return DataConfig(downscale=1.0, max_frames=1, **kw)


def test_triangulated_points_lie_on_the_known_surfaces(blob_root):
    root, gs, cams = blob_root
    scene = load_scene(root, _cfg())  # no point file: auto means SfM
    assert scene.info["points"].startswith("SfM on 7 cameras at one instant")
    pts = scene.points
    assert len(pts) > 500
    # Distance to the nearest known surface. Measured (default: two-view points kept): median 0.0064,
    # 90th percentile 0.026, 0.8 % beyond 0.1; with min_track_length=3: 0.0056, 0.022, 0.06 %.
    dist = surface_distance(pts, gs)
    assert float(dist.median()) < 0.012
    assert float(dist.quantile(0.9)) < 0.05
    assert float((dist > 0.1).float().mean()) < 0.02
    # Colours come from the images: those of a training view where the points project (RGB order, [0, 1]).
    view = scene.train_views[0]
    uv, z = view.camera.project(pts)
    u, v = uv[:, 0].long(), uv[:, 1].long()
    ok = (z > 0) & (u >= 0) & (u < view.camera.width) & (v >= 0) & (v < view.camera.height)
    seen = scene.image(view)[v[ok], u[ok]]
    assert ok.sum() > 200
    assert float((scene.point_colors[ok] - seen).abs().mean()) < 0.1
    assert float((scene.point_colors[ok] - seen[torch.randperm(len(seen))]).abs().mean()) > 0.2
    # Only the training cameras' images were used: cam00 (held out) is not needed to see the points.
    assert scene.test_views[0].camera.name == "cam00"


def test_sfm_at_several_instants_merges_their_points(blob_root):
    """``sfm.frames=2``: both frames of the (static) capture are triangulated and their points merged;
    the first frame's result is the one-instant run's, from the cache."""
    root, gs, _ = blob_root
    one = load_scene(root, DataConfig(downscale=1.0, max_frames=2))
    two = load_scene(root, DataConfig(downscale=1.0, max_frames=2, sfm=SfmOptions(frames=2)))
    assert two.info["points"].startswith("SfM at 2 instants")
    n = len(one.points)
    assert torch.equal(two.points[:n], one.points) and len(two.points) > 1.5 * n
    assert float(surface_distance(two.points[n:], gs).median()) < 0.012
    views = first_views(one.train_views)
    assert [v.frame for v in views] == [0] * len(views)
    from moegs.data.points import instant_views

    picks = instant_views(one.train_views, 5)  # more instants than frames: each frame once
    assert [{v.frame for v in vs} for vs in picks] == [{0}, {1}]
    assert [v.camera_id for v in picks[1]] == sorted(v.camera_id for v in views)


def test_auto_takes_random_points_when_sfm_finds_too_few(blob_root):
    root, _, _ = blob_root
    enough = load_scene(root, _cfg())
    n = len(enough.points)
    with pytest.warns(UserWarning, match=f"SfM found only {n} points"):
        few = load_scene(root, _cfg(sfm=SfmOptions(min_points=n + 1), num_random_points=300))
    assert len(few.points) == 300 and "random" in few.info["points"]
    forced = load_scene(root, _cfg(points="sfm", sfm=SfmOptions(min_points=n + 1)))  # "sfm" keeps them
    assert torch.equal(forced.points, enough.points)


def test_filters_are_applied(blob_root):
    root, _, cams = blob_root
    views = first_views(load_scene(root, _cfg(points="random", num_random_points=10)).train_views)
    images, cams = [v.source.load() for v in views], [v.camera for v in views]
    loose = sfm_module.triangulate(images, cams, SfmOptions(min_track_length=2, max_reprojection_error=4.0), progress=False)
    assert loose.track_length.min() == 2 and loose.error.max() > 1.0
    strict = sfm_module._filtered_arrays(loose, SfmOptions(min_track_length=4, max_reprojection_error=1.0))
    assert strict.track_length.min() >= 4 and strict.error.max() <= 1.0 and 0 < len(strict.xyz) < len(loose.xyz)
    # depth range: with near/far around the scene's middle, only the points inside survive
    tight = [replace(c, near=3.0, far=4.0) for c in cams]
    again = sfm_module.triangulate(images, tight, SfmOptions(min_track_length=2, max_reprojection_error=4.0), progress=False)
    assert 0 < len(again.xyz) < len(loose.xyz)
    z = torch.stack([c.project(torch.from_numpy(loose.xyz).float())[1] for c in tight])
    assert not bool((((z > 3.0) & (z < 4.0)).sum(0) >= 2).all())  # without the depth filter some are outside
    # each kept point is inside [near, far] of the (at least 2) cameras that see it
    z = torch.stack([c.project(torch.from_numpy(again.xyz).float())[1] for c in tight])  # [C, M]
    assert bool((((z > 3.0) & (z < 4.0)).sum(0) >= 2).all())


def test_sfm_is_cached_by_content(blob_root, cache, monkeypatch):
    root, _, _ = blob_root
    first = load_scene(root, _cfg())
    files = [f for f in (cache / "sfm").glob("*.pt") if str(f) in first.info["points"]]
    assert len(files) == 1

    def fail(*a, **k):
        raise AssertionError("SfM recomputed although cached")

    monkeypatch.setattr(sfm_module, "triangulate", fail)
    again = load_scene(root, _cfg())
    assert "read from" in again.info["points"] and str(files[0]) in again.info["points"]
    torch.testing.assert_close(again.points, first.points)
    # other settings are another cache entry
    with pytest.raises(AssertionError, match="recomputed"):
        load_scene(root, _cfg(sfm=SfmOptions(max_features=2000)))


def test_point_choices(blob_root, tmp_path):
    root, _, _ = blob_root
    rnd = load_scene(root, _cfg(points="random", num_random_points=123))
    assert len(rnd.points) == 123 and "random" in rnd.info["points"]
    xyz = np.random.default_rng(0).normal(size=(50, 3))
    write_ply_points(tmp_path / "mine.ply", xyz, np.full((50, 3), 0.25))
    mine = load_scene(root, _cfg(points=str(tmp_path / "mine.ply")))
    np.testing.assert_allclose(mine.points.numpy(), xyz, atol=1e-6)
    np.savez(tmp_path / "d3dgs.npz", data=np.concatenate([xyz, np.full((50, 3), 0.5), np.zeros((50, 1))], 1))
    assert len(load_scene(root, _cfg(points=str(tmp_path / "d3dgs.npz"))).points) == 50
    # a shipped point file wins in auto mode; "sfm" ignores it
    (tmp_path / "shipped").mkdir()
    for f in root.iterdir():
        (tmp_path / "shipped" / f.name).symlink_to(f)
    write_ply_points(tmp_path / "shipped" / "points3D.ply", xyz, np.full((50, 3), 0.25))
    assert load_scene(tmp_path / "shipped", _cfg()).info["points"] == "points3D.ply"
    assert load_scene(tmp_path / "shipped", _cfg(points="sfm")).info["points"].startswith("SfM")
    with pytest.raises(DataError, match="nothere.ply"):
        load_scene(root, _cfg(points=str(tmp_path / "nothere.ply")))
    (tmp_path / "x.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match="unknown point file type"):
        load_scene(root, _cfg(points=str(tmp_path / "x.txt")))
    with pytest.raises(ConfigError, match="min_track_length"):
        load_scene(root, _cfg(sfm=SfmOptions(min_track_length=1)))


def test_auto_falls_back_to_random_when_sfm_finds_nothing(tmp_path):
    """Textureless videos: SfM keeps no point; auto warns and samples random points, "sfm" is an error."""
    root = tmp_path / "flat"
    root.mkdir()
    cams = blob_rig(4, 64, 48)
    for cam in cams:
        write_video(root / f"{cam.name}.mp4", [np.full((48, 64, 3), 128, np.uint8)], fps=10)
    np.save(root / "poses_bounds.npy", poses_bounds(cams))
    with pytest.warns(UserWarning, match="SfM kept no point"):
        scene = load_scene(root, _cfg(num_random_points=77))
    assert len(scene.points) == 77 and "SfM kept no point" in scene.info["points"]
    with pytest.raises(DataError, match="SfM kept no point"):
        load_scene(root, _cfg(points="sfm"))


# ------------------------------------------------------------------------ mirrored Dynamic3DGS captures
def _write_d3dgs(root: Path, cams: list[Camera], images: list[np.ndarray], w2c: list[np.ndarray], points: np.ndarray) -> None:
    """A one-timestep Dynamic3DGS folder; the last camera is the test split."""
    (root / "ims").mkdir(parents=True)
    for i, img in enumerate(images):
        (root / "ims" / str(i)).mkdir()
        Image.fromarray(img).save(root / "ims" / str(i) / "000000.png")
    for split, idx in (("train", range(len(cams) - 1)), ("test", [len(cams) - 1])):
        meta = {"w": cams[0].width, "h": cams[0].height,
                "k": [[cams[i].K.tolist() for i in idx]], "w2c": [[w2c[i].tolist() for i in idx]],
                "fn": [[f"{i}/000000.png" for i in idx]], "cam_id": [[i for i in idx]]}
        (root / f"{split}_meta.json").write_text(json.dumps(meta))
    np.savez(root / "init_pt_cld.npz", data=np.concatenate([points, np.full_like(points, 0.5), np.zeros((len(points), 1))], 1))


@pytest.fixture(scope="module")
def mirrored_pair(tmp_path_factory):
    """The same capture written twice: as is, and with its world mirrored (x -> -x) in the files."""
    base = tmp_path_factory.mktemp("mirror")
    gs, cams = blob_gaussians(), blob_rig(4, 96, 72)
    images = [(gs.render(c).color.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for c in cams]
    w2c = [c.world_to_camera.double().numpy() for c in cams]
    pts = gs.means[:200].double().numpy()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    _write_d3dgs(base / "plain", cams, images, w2c, pts)
    _write_d3dgs(base / "mirrored", cams, images, [m @ flip for m in w2c], pts * [-1.0, 1.0, 1.0])
    return base, gs


def test_mirrored_world_loads_and_renders_identically(mirrored_pair):
    base, gs = mirrored_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = load_scene(base / "plain")
    for f in ("train_meta.json", "test_meta.json"):  # the files really are mirrored
        w2c = np.array(json.loads((base / "mirrored" / f).read_text())["w2c"][0])
        assert (np.linalg.det(w2c[:, :3, :3]) < 0).all()
    with pytest.warns(UserWarning, match="determinant -1") as rec:
        mirrored = load_scene(base / "mirrored")
    assert sum("determinant -1" in str(w.message) for w in rec) == 1  # warned once
    assert "mirrored" in mirrored.info["world_frame"] and plain.info["world_frame"] == "as in the files"
    torch.testing.assert_close(mirrored.points, plain.points)
    for a, b in zip(plain.views, mirrored.views):
        assert torch.linalg.det(b.camera.R) > 0
        torch.testing.assert_close(a.camera.world_to_camera, b.camera.world_to_camera, atol=1e-6, rtol=0)
        torch.testing.assert_close(gs.render(b.camera).color, gs.render(a.camera).color, atol=1e-5, rtol=0)
        torch.testing.assert_close(mirrored.image(b), plain.image(a))


def test_mixed_or_non_orthonormal_rotations_are_errors(mirrored_pair, tmp_path):
    base, _ = mirrored_pair
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(base / "mirrored", mixed)
    meta = json.loads((base / "plain" / "test_meta.json").read_text())
    (mixed / "test_meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="determinant") as e:
        load_scene(mixed)
    assert "_meta.json" in str(e.value)
    skew = tmp_path / "skew"
    shutil.copytree(base / "plain", skew)
    meta = json.loads((skew / "train_meta.json").read_text())
    meta["w2c"][0][1][0][0] *= 1.2
    (skew / "train_meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="train_meta.json: timestep 0, camera 1: .*not orthonormal"):
        load_scene(skew)


# ------------------------------------------------------------------------------------ real scene
@pytest.mark.slow
def test_panoptic_sfm_points_fall_on_the_people():
    """SfM points of panoptic_basketball agree with its cameras: seen from the cameras with masks,
    they land on the segmented people far more often than random points (masks cover ~10 % of an image).
    Measured: 57 % of SfM point projections fall in a mask (random points: 12 %), and 28 % of the
    points are in the mask of every camera that sees them (random: 1 %)."""
    root = data_path("panoptic_basketball")

    def mask_stats(points: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scene = load_scene(root, DataConfig(max_frames=1, points=points, num_random_points=750))
        views = [v for v in first_views(scene.views) if (root / "seg" / f"{v.camera.name}.png").is_file()]
        seen = torch.zeros(len(scene.points))
        hits = torch.zeros(len(scene.points))
        for v in views:
            m = torch.from_numpy(np.array(Image.open(root / "seg" / f"{v.camera.name}.png")) > 0)
            m = m[..., 0] if m.dim() == 3 else m
            uv, z = v.camera.project(scene.points)
            u, w = uv[:, 0].floor().long(), uv[:, 1].floor().long()
            ok = (z > 0) & (u >= 0) & (u < v.camera.width) & (w >= 0) & (w < v.camera.height)
            hit = torch.zeros(len(scene.points), dtype=torch.bool)
            hit[ok] = m[w[ok], u[ok]]
            seen += ok
            hits += hit
        return scene, float(hits.sum() / seen.sum()), float(((hits == seen) & (seen > 0)).float().mean())

    scene, in_mask, all_views = mask_stats("sfm")
    assert scene.info["initial_points"].startswith("SfM on 27 cameras at one instant")
    assert len(scene.points) > 1000
    assert in_mask > 0.4 and all_views > 0.18
    _, rnd_in_mask, rnd_all = mask_stats("random")
    assert rnd_in_mask < 0.2 and rnd_all < 0.05
