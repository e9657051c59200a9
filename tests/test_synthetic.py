"""The generated heterogeneous-dynamics scene: N3V round trip, codec fidelity, per-region dynamics, atomic writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from moegs.data import DataConfig, detect_format, load_scene
from moegs.data import synthetic
from moegs.data.synthetic import COMPONENTS, SCENE_VERSION, SyntheticConfig, generate_scene, ground_truth
from moegs.errors import DataError

SMALL = SyntheticConfig(num_cameras=5, num_frames=6, width=160, height=120, num_points=2000)
TINY = SyntheticConfig(num_cameras=3, num_frames=3, width=32, height=24, num_points=200)
DYNAMIC = COMPONENTS[1:]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("synthetic") / "scene", SMALL)


@pytest.fixture(scope="module")
def default_gt() -> synthetic.GroundTruth:
    return ground_truth(SyntheticConfig())


@pytest.fixture(scope="module")
def footprints(default_gt) -> dict[str, torch.Tensor]:
    """Per dynamic component, ``[T, H, W]`` accumulated alpha of that component alone, camera 0."""
    T = default_gt.config.num_frames
    return {c: torch.stack([default_gt.render(0, k, components=(c,)).alpha for k in range(T)]) for c in DYNAMIC}


def pairwise(x: torch.Tensor) -> torch.Tensor:
    """``[M, M]`` distances between the rows of ``x`` ``[M, 3]`` (exact, unlike cdist's matmul form)."""
    return (x[:, None] - x[None]).norm(dim=-1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


# --------------------------------------------------------------------------- the N3V round trip
def test_generated_folder_loads_as_n3v(small_scene):
    assert detect_format(small_scene) == "n3v"
    assert sorted(p.name for p in small_scene.glob("cam*.mp4")) == [f"cam{i:02d}.mp4" for i in range(5)]
    scene = load_scene(small_scene, DataConfig(downscale=1))
    assert scene.format == "n3v" and scene.num_cameras == 5
    assert {v.camera_id for v in scene.test_views} == {0}
    assert {v.camera_id for v in scene.train_views} == {1, 2, 3, 4}
    assert len(scene.test_views) == 6 and len(scene.train_views) == 4 * 6
    assert scene.times == pytest.approx(SMALL.times) and scene.times[0] == 0.0 and scene.times[-1] == 1.0
    assert all(v.camera.width == 160 and v.camera.height == 120 for v in scene.views)
    assert scene.image(scene.test_views[3]).shape == (120, 160, 3)
    assert scene.info["points"] == "points3D.ply" and scene.points.shape == (2000, 3)


def test_loaded_cameras_equal_generator_cameras(small_scene):
    scene = load_scene(small_scene, DataConfig(downscale=1))
    gt = ground_truth(SMALL)
    seen = set()
    for v in scene.views:
        ref, cam = gt.cameras[v.camera_id], v.camera
        assert cam.name == ref.name
        torch.testing.assert_close(cam.world_to_camera, ref.world_to_camera, atol=1e-4, rtol=0)
        for k in ("fx", "fy", "cx", "cy", "near", "far"):
            assert getattr(cam, k) == pytest.approx(getattr(ref, k), abs=1e-4), k
        assert (cam.width, cam.height) == (ref.width, ref.height)
        seen.add(v.camera_id)
    assert seen == set(range(SMALL.num_cameras))
    # A forward-facing rig: every camera sees the target region in front of it, cam00 in the middle.
    centres = torch.stack([c.center for c in gt.cameras])
    torch.testing.assert_close(centres[0, [0, 2]], centres[1:, [0, 2]].mean(0), atol=0.05, rtol=0)


def test_decoded_frames_match_renders(small_scene):
    scene = load_scene(small_scene, DataConfig(downscale=1))
    gt = ground_truth(SMALL)
    values = [psnr(scene.image(v), gt.render(v.camera_id, v.frame).color.clamp(0, 1)) for v in scene.views]
    assert min(values) > 30.0, f"worst decoded frame is {min(values):.1f} dB from its render"
    # and the frames are not interchangeable: a frame matched against another time/camera is far worse
    v0 = scene.test_views[0]
    assert psnr(scene.image(v0), gt.render(2, SMALL.num_frames - 1).color.clamp(0, 1)) < min(values) - 5


def test_initial_points_are_noisy_ground_truth_centres(small_scene):
    scene = load_scene(small_scene, DataConfig(downscale=1))
    gt = ground_truth(SMALL)
    centres = torch.cat([gt.at(t).means for t in (0.0, 1 / 3, 2 / 3, 1.0)])
    nearest = torch.cdist(scene.points, centres, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert float(nearest.median()) < 3 * SMALL.point_noise  # jittered by point_noise, not random
    assert float(nearest.median()) > 0.2 * SMALL.point_noise  # ... and really jittered
    assert 0.0 <= float(scene.point_colors.min()) and float(scene.point_colors.max()) <= 1.0


# --------------------------------------------------------------------------- heterogeneous dynamics
def test_components_are_counted_and_deterministic(default_gt):
    labels = default_gt.labels
    assert len(labels) == len(default_gt.at(0.3)) > 10_000
    assert sorted(COMPONENTS[i] for i in labels.unique().tolist()) == sorted(COMPONENTS)
    again, other = ground_truth(SyntheticConfig()).at(0.4), ground_truth(SyntheticConfig(seed=1)).at(0.4)
    torch.testing.assert_close(again.colors, default_gt.at(0.4).colors, atol=0, rtol=0)
    assert not torch.equal(other.colors, again.colors)
    only = ground_truth(SyntheticConfig(background=False, appearing_objects=False))
    assert {COMPONENTS[i] for i in only.labels.unique().tolist()} == {"rigid", "deforming", "color_changing"}


def test_dynamic_components_occupy_separate_regions(default_gt, footprints):
    masks = {c: (a > 0.05).any(0) for c, a in footprints.items()}
    for i, a in enumerate(DYNAMIC):
        assert int(masks[a].sum()) > 300, a
        for b in DYNAMIC[i + 1 :]:
            assert not (masks[a] & masks[b]).any(), f"{a} and {b} overlap in cam00"
    static = ~torch.stack(list(masks.values())).any(0)
    assert float(static.float().mean()) > 0.5
    # the background covers the whole image: no holes onto the black backdrop
    assert float(default_gt.render(0, 0, components=("background",)).alpha.min()) > 0.99


def test_regions_label_each_pixel_with_the_component_in_front(default_gt, footprints):
    for k in (0, 11, 23):
        cam = default_gt.cameras[0].with_time(default_gt.config.times[k])
        lab = default_gt.regions(cam)
        assert lab.shape == (cam.height, cam.width) and lab.dtype == torch.int64
        assert (lab >= 0).all()  # the wall and floor cover the whole image
        for c in DYNAMIC:
            alpha = footprints[c][k]
            # the component's own opaque pixels are its region but where the background is in front of it
            # (the flag's pole), and no pixel it does not cover is
            mine = lab[alpha > 0.9]
            other = mine[mine != COMPONENTS.index(c)]
            assert (other == COMPONENTS.index("background")).all() and len(other) <= 0.05 * len(mine), c
            assert not (lab[alpha < 0.05] == COMPONENTS.index(c)).any(), c
        dynamic = torch.stack([footprints[c][k] for c in DYNAMIC]).sum(0)
        assert (lab[dynamic < 0.05] == COMPONENTS.index("background")).all()
    # without the background, pixels nothing covers are -1
    alone = ground_truth(SyntheticConfig(background=False, deforming_object=False, appearing_objects=False,
                                         color_changing_object=False))
    cam = alone.cameras[0]
    alpha = alone.render(0, 0).alpha
    lab = alone.regions(cam)
    assert torch.equal(lab == COMPONENTS.index("rigid"), alpha >= 0.5) and torch.equal(lab == -1, alpha < 0.5)


def test_read_config_of_a_generated_folder(small_scene, tmp_path):
    assert synthetic.read_config(small_scene) == SMALL
    assert synthetic.read_config(tmp_path) is None


def test_static_region_is_constant(default_gt, footprints, small_scene):
    T = default_gt.config.num_frames
    touched = torch.stack([(a > 1e-3).any(0) for a in footprints.values()]).any(0)
    video = torch.stack([default_gt.render(0, k).color for k in range(T)])  # [T, H, W, 3]
    static_dev = (video - video[:1]).abs().amax(dim=(0, 3))[~touched]
    assert float(static_dev.max()) < 2 / 255
    dynamic_dev = (video - video[:1]).abs().amax(dim=(0, 3))[touched]
    assert float((dynamic_dev > 0.1).float().mean()) > 0.3  # most of the dynamic footprint really changes
    # in the decoded video the static region only carries codec noise
    scene = load_scene(small_scene, DataConfig(downscale=1))
    gt = ground_truth(SMALL)
    small_touched = torch.stack([
        (gt.render(0, k, components=(c,)).alpha > 1e-3) for c in DYNAMIC for k in range(SMALL.num_frames)
    ]).any(0)
    decoded = torch.stack([scene.image(v) for v in sorted(scene.test_views, key=lambda v: v.frame)])
    wobble = (decoded - decoded.mean(0)).abs().mean(-1)[:, ~small_touched]
    assert float(wobble.mean()) < 0.01
    assert float((decoded - decoded.mean(0)).abs().mean(-1)[:, small_touched].mean()) > 5 * float(wobble.mean())


def test_rigid_object_moves_rigidly(default_gt, footprints):
    sets = [default_gt.at(t, ("rigid",)) for t in (0.0, 0.3, 0.7)]
    d0 = pairwise(sets[0].means)
    for g in sets[1:]:
        torch.testing.assert_close(pairwise(g.means), d0, atol=1e-4, rtol=0)
        assert float((g.means.mean(0) - sets[0].means.mean(0)).norm()) > 0.1  # it travels
        assert float((g.quats - sets[0].quats).abs().max()) > 0.1  # and turns
    a = footprints["rigid"] > 0.5
    iou = float((a[0] & a[12]).sum() / (a[0] | a[12]).sum())
    assert iou < 0.6


def test_flag_deforms_non_rigidly(default_gt):
    sets = [default_gt.at(t, ("deforming",)) for t in (0.0, 0.2, 0.5)]
    d0 = pairwise(sets[0].means)
    for g in sets[1:]:
        change = (pairwise(g.means) - d0).abs()
        assert float(change.max()) > 0.05  # distances within the sheet change: not a rigid motion
    rest = default_gt.parts[COMPONENTS.index("deforming")].rest.means
    at_pole = rest[:, 0] < rest[:, 0].min() + 0.01
    moved = (sets[1].means - rest).norm(dim=-1)
    assert float(moved[at_pole].max()) < 1e-3 and float(moved.max()) > 0.1  # fixed at the pole, free at the end


def test_appearing_objects_fade_in_and_out(default_gt, footprints):
    a = footprints["appearing"]  # [T, H, W]
    peak = a.flatten(1).amax(1)
    assert float(peak[0]) < 0.01 and float(peak[-1]) < 0.01
    assert float(peak.max()) > 0.9
    k = int(peak.argmax())
    region = a[k] > 0.5
    first, brightest = default_gt.render(0, 0).color, default_gt.render(0, k).color
    assert float((first - brightest).abs().mean(-1)[region].mean()) > 0.1
    opac = torch.stack([torch.sigmoid(default_gt.at(t, ("appearing",)).opacity_logits) for t in (0.0, 0.3, 0.7, 1.0)])
    assert float(opac[0].max()) < 1e-3 and float(opac[-1].max()) < 1e-3 and float(opac[1:3].amax(0).min()) > 0.5


def test_color_changing_object_keeps_shape_and_changes_colour(default_gt, footprints):
    a = footprints["color_changing"]
    assert float((a - a[0]).abs().max()) < 1e-5  # the geometry is static
    region = a[0] > 0.5
    means = torch.stack([default_gt.render(0, k).color[region].mean(0) for k in range(0, 24, 4)])  # [6, 3]
    assert float((means.amax(0) - means.amin(0)).min()) > 0.3  # every channel swings


# --------------------------------------------------------------------------- atomicity and caching
def _fail_after_first_video(monkeypatch):
    real = synthetic.write_video
    calls = []

    def flaky(path, frames, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise KeyboardInterrupt("interrupted while writing videos")
        return real(path, frames, **kw)

    monkeypatch.setattr(synthetic, "write_video", flaky)
    return calls


def test_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    calls = _fail_after_first_video(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generate_scene(tmp_path / "scene", TINY)
    assert len(calls) == 2 and calls[0].parent != tmp_path / "scene"  # it wrote elsewhere first
    assert list(tmp_path.iterdir()) == []  # neither the scene nor a temporary folder remains


def test_second_call_is_a_no_op_and_overwrite_replaces(tmp_path, monkeypatch):
    root = generate_scene(tmp_path / "scene", TINY)
    marker = json.loads((root / "synthetic.json").read_text())
    assert marker["version"] == SCENE_VERSION and marker["config"] == asdict(TINY)
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    calls = _fail_after_first_video(monkeypatch)
    assert generate_scene(root, TINY) == root and calls == []  # nothing rendered or written
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    with pytest.raises(DataError, match="overwrite=True"):
        generate_scene(root, SyntheticConfig(**{**asdict(TINY), "seed": 3}))
    with pytest.raises(KeyboardInterrupt):  # a failed overwrite keeps the old scene
        generate_scene(root, TINY, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    monkeypatch.undo()
    other = SyntheticConfig(**{**asdict(TINY), "seed": 3})
    generate_scene(root, other, overwrite=True)
    assert json.loads((root / "synthetic.json").read_text())["config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_foreign_folder_is_not_touched(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a generated synthetic scene"):
        generate_scene(root, TINY)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_default_scene_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGS_CACHE_DIR", str(tmp_path / "cache"))
    path = synthetic.default_scene_path()
    assert path == tmp_path / "cache" / "scenes" / SCENE_VERSION
    assert synthetic.ensure_default_scene() == path
    scene = load_scene(path, DataConfig(downscale=1))
    cfg = SyntheticConfig()
    assert scene.num_cameras == cfg.num_cameras and len(scene.test_views) == cfg.num_frames
    assert scene.resolution() == (cfg.width, cfg.height)
    mtime = (path / "synthetic.json").stat().st_mtime_ns
    assert synthetic.ensure_default_scene() == path and (path / "synthetic.json").stat().st_mtime_ns == mtime


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_cameras"):
        SyntheticConfig(num_cameras=1)
    with pytest.raises(ValueError, match="component"):
        SyntheticConfig(background=False, rigid_object=False, deforming_object=False, appearing_objects=False,
                        color_changing_object=False)
