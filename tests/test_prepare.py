"""``moegs prepare``: SfM cameras and points for a folder of synchronised videos without poses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from moegs.cli.main import main
from moegs.data import DataConfig, load_scene
from moegs.data.n3v import umeyama
from moegs.data.textured import write_blob_scene
from moegs.data.video import write_video


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The blob scene's videos, poses removed, prepared in place by the CLI; with the true cameras."""
    root = tmp_path_factory.mktemp("prep") / "videos"
    _, cams = write_blob_scene(root, with_poses=False)
    assert main(["prepare", str(root), "--quiet"]) == 0
    return root, cams


def _camera_errors(scene, true_cams) -> tuple[float, float]:
    """Largest rotation error (degrees) and centre error (fraction of the rig radius) of the scene's cameras
    against ``true_cams`` after the similarity that best maps the centres onto the true ones (Umeyama)."""
    cams = {v.camera.name: v.camera for v in scene.views}
    est = np.stack([cams[c.name].center.double().numpy() for c in true_cams])
    true = np.stack([c.center.double().numpy() for c in true_cams])
    s, R, t = umeyama(est, true)
    radius = np.linalg.norm(true - true.mean(0), axis=1).max()
    centre = np.linalg.norm(s * est @ R.T + t - true, axis=1).max() / radius
    rot = 0.0
    for c in true_cams:
        D = cams[c.name].R.double().numpy() @ R.T @ c.R.double().numpy().T  # estimated vs true, in the true frame
        rot = max(rot, float(np.degrees(np.arccos(np.clip((np.trace(D) - 1) / 2, -1, 1)))))
    return rot, float(centre)


def test_prepare_recovers_the_cameras(prepared):
    root, true_cams = prepared
    summary = json.loads((root / "prepare.json").read_text())
    assert summary["cameras"] == {f"cam{i:02d}.mp4": f"cam{i:02d}.mp4" for i in range(8)}
    assert summary["points"] > 500 and summary["mean_reprojection_error"] < 1.0
    assert not list(root.glob(".moegs-prepare-*"))  # no staging left behind
    scene = load_scene(root, DataConfig(downscale=1.0, max_frames=1))
    assert scene.format == "n3v" and scene.info["points"] == "points3D.ply" and len(scene.points) == summary["points"]
    rot, centre = _camera_errors(scene, true_cams)
    # Measured: 0.13 degrees, 0.25 % of the rig radius; focal 345.7 px for the true 345.6.
    assert rot < 1.0 and centre < 0.01
    f = scene.views[0].camera.fx
    assert abs(f - true_cams[0].fx) / true_cams[0].fx < 0.01
    # the points are in front of every camera, inside its near/far bounds
    for v in scene.views:
        z = v.camera.project(scene.points)[1]
        assert float((z > v.camera.near).float().mean()) > 0.99 and float(z.max()) < v.camera.far


def test_prepare_refuses_to_overwrite_and_per_camera_intrinsics(prepared, tmp_path, capsys):
    root, true_cams = prepared
    assert main(["prepare", str(root), "--quiet"]) == 2
    assert "poses_bounds.npy: exists; pass --overwrite" in capsys.readouterr().err
    # other names, another output folder, one focal length per video
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(len(true_cams)):
        shutil.copy(root / f"cam{i:02d}.mp4", src / f"view_{chr(97 + i)}.mp4")
    out = tmp_path / "scene"
    assert main(["prepare", str(src), "--out", str(out), "--per-camera-intrinsics", "--quiet"]) == 0
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["cameras"]["view_a.mp4"] == "cam00.mp4" and not summary["shared_intrinsics"]
    assert (out / "cam03.mp4").is_symlink() and (out / "cam03.mp4").resolve() == (src / "view_d.mp4").resolve()
    assert sorted(p.name for p in src.iterdir()) == [f"view_{chr(97 + i)}.mp4" for i in range(len(true_cams))]
    scene = load_scene(out, DataConfig(downscale=1.0, max_frames=1))
    rot, centre = _camera_errors(scene, true_cams)
    assert rot < 1.0 and centre < 0.01
    assert len(set(summary["focal_lengths"])) > 1


def _assert_failed(argv, capsys, *words) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moegs: error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err


def _nothing_written(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names


def test_bad_inputs(tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    frame = np.full((48, 64, 3), 100, np.uint8)
    write_video(one / "a.mp4", [frame], fps=10)
    _assert_failed(["prepare", str(one)], capsys, str(one), "at least 2", "found 1 (a.mp4)")
    _nothing_written(one, {"a.mp4"})

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    write_video(sizes / "a.mp4", [frame], fps=10)
    write_video(sizes / "b.mp4", [np.zeros((32, 64, 3), np.uint8)], fps=10)
    _assert_failed(["prepare", str(sizes)], capsys, str(sizes / "b.mp4"), "64x32", "a.mp4 is 64x48")
    _nothing_written(sizes, {"a.mp4", "b.mp4"})

    broken = tmp_path / "broken"
    broken.mkdir()
    write_video(broken / "a.mp4", [frame], fps=10)
    (broken / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    _assert_failed(["prepare", str(broken)], capsys, str(broken / "b.mp4"))
    _nothing_written(broken, {"a.mp4", "b.mp4"})

    _assert_failed(["prepare", str(tmp_path / "nope")], capsys, "nope", "no such directory")


def test_too_few_registered_cameras(tmp_path, capsys):
    """Three views of the blob scene and one of noise: SfM registers 3 of 4 and says which one failed."""
    root = tmp_path / "videos"
    write_blob_scene(root, num_cameras=3, width=384, height=288, with_poses=False)
    noise = np.random.default_rng(0).integers(0, 256, (288, 384, 3), dtype=np.uint8)
    write_video(root / "zz_noise.mp4", [noise, noise], fps=10)
    _assert_failed(["prepare", str(root)], capsys, str(root), "registered 3 of 4 cameras", "not registered: zz_noise.mp4")
    _nothing_written(root, {"cam00.mp4", "cam01.mp4", "cam02.mp4", "zz_noise.mp4"})
