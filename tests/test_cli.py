"""The command line on bad input: one clear line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import data_path
from moegs.cli.main import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return err[-1]


def _run(argv, capsys):
    code = main(argv)
    return code, _err_line(capsys)


def test_missing_folder(tmp_path, capsys):
    code, line = _run(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "nope" in line and "no such" in line
    assert not (tmp_path / "run").exists()


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "readme.txt").write_text("hello")
    code, line = _run(["inspect", str(tmp_path / "scene")], capsys)
    assert code == 2 and "unknown layout" in line


@pytest.fixture
def colmap_copy(tmp_path):
    src = data_path("n3v_flame_steak_frame0")
    dst = tmp_path / "scene"
    (dst / "sparse").mkdir(parents=True)
    shutil.copytree(src / "sparse" / "0", dst / "sparse" / "0")
    (dst / "images").mkdir()
    for f in (src / "images").iterdir():
        (dst / "images" / f.name).symlink_to(f)
    return dst


def test_corrupt_colmap_file(colmap_copy, tmp_path, capsys):
    f = colmap_copy / "sparse" / "0" / "images.bin"
    f.write_bytes(f.read_bytes()[:1000])  # truncated
    code, line = _run(["train", str(colmap_copy), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "images.bin" in line
    assert not (tmp_path / "run").exists()


def test_image_that_does_not_decode(colmap_copy, tmp_path, capsys):
    for f in (colmap_copy / "images").iterdir():
        f.unlink()
        f.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, line = _run(["train", str(colmap_copy), "--downscale", "16", "--steps", "2", "--out",
                       str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "cam0" in line and ".png" in line


def _n3v(tmp_path, n_cams=2, poses=None):
    from moegs.data.video import write_video

    root = tmp_path / "n3v"
    root.mkdir()
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    for c in range(n_cams):
        write_video(root / f"cam{c:02d}.mp4", frames, 10)
    if poses is None:
        poses = np.zeros((n_cams, 17))
        for c in range(n_cams):
            m = np.concatenate([np.eye(3)[:, [1, 0, 2]] * [1, 1, -1], [[c * 0.1], [0], [0]], [[16], [16], [20]]], 1)
            poses[c, :15] = m.reshape(-1)
            poses[c, 15:] = [0.5, 10.0]
    np.save(root / "poses_bounds.npy", poses)
    return root


def test_camera_count_mismatch(tmp_path, capsys):
    root = _n3v(tmp_path)
    np.save(root / "poses_bounds.npy", np.zeros((3, 17)))
    code, line = _run(["inspect", str(root)], capsys)
    assert code == 2 and "poses_bounds.npy" in line


def test_nan_in_poses(tmp_path, capsys):
    root = _n3v(tmp_path)
    p = np.load(root / "poses_bounds.npy")
    p[1, 3] = np.nan
    np.save(root / "poses_bounds.npy", p)
    code, line = _run(["train", str(root), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "poses_bounds.npy" in line and ("NaN" in line or "nan" in line.lower())
    assert not (tmp_path / "run").exists()


def test_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path), "--steps", "-5"])
    assert e.value.code == 2 and "must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path), "--expert", "nonexistent"])
    code, line = _run(["train", str(data_path("dnerf_mutant")), "--set", "strategy.no_such_field=1", "--out",
                       str(tmp_path / "run")], capsys)
    assert code == 2 and "no_such_field" in line
    code, line = _run(["train", str(data_path("dnerf_mutant")), "--set", "expert.no_such_option=1", "--out",
                       str(tmp_path / "run")], capsys)
    assert code == 2 and "no_such_option" in line
    for near, words in (("-1", "near must be a positive number"), ("1000", "not below camera")):
        code, line = _run(["train", str(data_path("dnerf_mutant")), "--near", near, "--out", str(tmp_path / "run")],
                          capsys)
        assert code == 2 and line.startswith("moegs: error:") and words in line
    assert not (tmp_path / "run").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    ck = tmp_path / "last.pt"
    ck.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    code, line = _run(["eval", str(ck), "--data", str(tmp_path)], capsys)
    assert code == 2 and "last.pt" in line and "checkpoint" in line
    code, line = _run(["render", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "missing.pt" in line


def test_entry_point_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "moegs.cli.main", "inspect", str(tmp_path / "absent")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("moegs: error:") and "absent" in r.stderr
