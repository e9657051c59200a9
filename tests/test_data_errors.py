"""Bad input to the COLMAP, static COLMAP, video, N3V and Technicolor readers: a DataError naming the file."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image
from test_colmap import _write_static_scene
from test_n3v import ring_c2w, write_n3v_scene
from test_technicolor import _frames, _rig

from moegs.data import DataConfig, load_scene, technicolor
from moegs.data.colmap import read_cameras_binary, read_images_binary, read_images_text, read_model, read_points3D_binary, write_model
from moegs.data.video import probe_video
from moegs.errors import DataError, MissingFramesWarning


# ------------------------------------------------------------------- COLMAP
@pytest.fixture
def colmap_scene(tmp_path):
    _write_static_scene(tmp_path / "s", 4)
    return tmp_path / "s"


@pytest.mark.parametrize("name,reader", [("cameras.bin", read_cameras_binary), ("images.bin", read_images_binary), ("points3D.bin", read_points3D_binary)])
def test_truncated_binary(colmap_scene, name, reader):
    f = colmap_scene / "sparse" / "0" / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 5])
    with pytest.raises(DataError, match=name.replace(".", r"\.") + ".*truncated"):
        reader(f)
    f.write_bytes(data + b"\0\0")
    with pytest.raises(DataError, match=f"{name}.*trailing"):
        reader(f)


def test_corrupt_count_and_model(colmap_scene):
    f = colmap_scene / "sparse" / "0" / "cameras.bin"
    f.write_bytes((10**12).to_bytes(8, "little") + f.read_bytes()[8:])
    with pytest.raises(DataError, match="cameras.bin.*claims"):
        read_cameras_binary(f)
    f.write_bytes(f.read_bytes()[:8 + 4] + (99).to_bytes(4, "little", signed=True) + f.read_bytes()[16:])
    with pytest.raises(DataError, match="cameras.bin"):
        load_scene(colmap_scene, DataConfig(format="colmap"))


def test_bad_text_model(colmap_scene, tmp_path):
    write_model(read_model(colmap_scene / "sparse" / "0"), tmp_path / "txt", binary=False)
    f = tmp_path / "txt" / "images.txt"
    lines = f.read_text().splitlines()
    lines[2] = lines[2].replace(" 1 img000.png", " x img000.png")
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="images.txt: line 3"):
        read_images_text(f)
    c = tmp_path / "txt" / "cameras.txt"
    c.write_text("1 FISHEYE_WEIRD 10 10 1 2 3\n")
    with pytest.raises(DataError, match="cameras.txt.*FISHEYE_WEIRD"):
        read_model(tmp_path / "txt")
    (tmp_path / "txt" / "points3D.txt").unlink()
    c.write_text("1 PINHOLE 10 10 1 1 5 5\n")
    with pytest.raises(DataError, match="points3D.txt"):
        read_model(tmp_path / "txt")


def test_static_scene_missing_and_undecodable_images(colmap_scene):
    (colmap_scene / "images" / "img002.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="img002.png"):
        load_scene(colmap_scene, DataConfig(format="colmap"))
    (colmap_scene / "images" / "img002.png").unlink()
    listed = len(list((colmap_scene / "images").iterdir())) + 1
    with pytest.warns(MissingFramesWarning, match=f"1 of the {listed} images.*img002.png"):
        scene = load_scene(colmap_scene, DataConfig(format="colmap"))
    names = {v.camera.name for v in scene.views}
    assert len(names) == listed - 1 and "img002" not in names
    for f in (colmap_scene / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="none of the .* images .* is on disk"):
        load_scene(colmap_scene, DataConfig(format="colmap"))


def test_static_scene_truncated_image_fails_on_decode(colmap_scene):
    f = colmap_scene / "images" / "img001.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(f)
    f.write_bytes(f.read_bytes()[:200])  # header intact, pixels cut
    scene = load_scene(colmap_scene, DataConfig(format="colmap"))
    view = next(v for v in scene.views if v.camera.name == "img001")
    with pytest.raises(DataError, match="img001.png"):
        scene.image(view)


def test_static_scene_unsupported_model(colmap_scene):
    model = read_model(colmap_scene / "sparse" / "0")
    model.cameras[1].model, model.cameras[1].params = "OPENCV_FISHEYE", np.array([50.0, 50.0, 20.0, 15.0, 0, 0, 0, 0])
    write_model(model, colmap_scene / "sparse" / "0")
    with pytest.raises(DataError, match="OPENCV_FISHEYE"):
        load_scene(colmap_scene, DataConfig(format="colmap"))


# ---------------------------------------------------------------------- N3V
@pytest.fixture
def n3v_scene(tmp_path):
    write_n3v_scene(tmp_path / "n", ring_c2w(3), frames=3)
    return tmp_path / "n"


def _n3v(path):
    return load_scene(path, DataConfig(format="n3v", num_random_points=10))


def test_poses_bounds_shape_nan_count(n3v_scene):
    pb = n3v_scene / "poses_bounds.npy"
    good = np.load(pb)
    np.save(pb, good[:, :15])
    with pytest.raises(DataError, match=r"poses_bounds.npy.*\[N, 17\]"):
        _n3v(n3v_scene)
    bad = good.copy()
    bad[1, 3] = np.nan
    np.save(pb, bad)
    with pytest.raises(DataError, match=r"poses_bounds.npy.*NaN or inf in rows \[1\]"):
        _n3v(n3v_scene)
    np.save(pb, good[:2])
    with pytest.raises(DataError, match="poses_bounds.npy.*2 cameras.*3 camXX.mp4"):
        _n3v(n3v_scene)
    pb.write_bytes(b"garbage")
    with pytest.raises(DataError, match="poses_bounds.npy"):
        _n3v(n3v_scene)
    pb.unlink()
    with pytest.raises(DataError, match="poses_bounds.npy.*missing"):
        _n3v(n3v_scene)


def test_n3v_truncated_video(n3v_scene):
    f = n3v_scene / "cam01.mp4"
    f.write_bytes(f.read_bytes()[:600])
    with pytest.raises(DataError, match="cam01.mp4"):
        _n3v(n3v_scene)


def test_video_truncated_with_index_first(tmp_path):
    """A 'faststart' MP4 (index before the data) cut short still opens; the missing frames are caught."""
    f = tmp_path / "cam00.mp4"
    with av.open(str(f), "w", format="mp4", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(10):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.6)])
    with pytest.raises(DataError, match="cam00.mp4.*(truncated|corrupt)"):
        probe_video(f)


# -------------------------------------------------------------- Technicolor
@pytest.fixture
def techni_scene(tmp_path):
    return technicolor.write_technicolor_scene(tmp_path / "Train", _rig(3), _frames(3, 2))


def _techni(path):
    return load_scene(path, DataConfig(format="technicolor", test_cameras=(0,), num_random_points=10))


def test_technicolor_bad_parameters(techni_scene):
    f = techni_scene / "cameras_parameters.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(DataError, match="cameras_parameters.txt.*2 cameras"):
        _techni(techni_scene)
    f.write_text("\n".join(lines[:2] + [lines[2] + " 7"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match="cameras_parameters.txt: line 3: expected 12"):
        _techni(techni_scene)
    f.write_text("\n".join(lines[:2] + [lines[2].replace(lines[2].split()[0], "nan", 1)] + lines[3:]) + "\n")
    with pytest.raises(DataError, match="cameras_parameters.txt: line 3"):
        _techni(techni_scene)


def test_technicolor_missing_and_broken_frames(techni_scene):
    (techni_scene / "Train_undist_00002_01.png").write_bytes(b"\x89PNG broken")
    scene = _techni(techni_scene)
    view = next(v for v in scene.views if v.camera_id == 1 and v.frame == 1)
    with pytest.raises(DataError, match="Train_undist_00002_01.png"):
        scene.image(view)
    (techni_scene / "Train_undist_00002_01.png").unlink()
    with pytest.raises(DataError, match="Train_undist_00002_01.png.*missing"):
        _techni(techni_scene)
