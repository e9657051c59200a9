"""Shared fixtures. Real public scenes are read in place from the data folder beside
the project (``../data`` relative to the repository's parent, or ``$MOEGS_TEST_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MOEGS_TEST_DATA", REPO.parent / "shared" / "data"))


def data_path(name: str) -> Path:
    """Path of a shared real scene; skips the test when the data folder is not there."""
    p = DATA_DIR / name
    if not p.exists():
        pytest.skip(f"real scene {name} not found under {DATA_DIR} (set MOEGS_TEST_DATA)")
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def make_toy_scene(num_views: int = 6, num_times: int = 3, width: int = 48, height: int = 36, seed: int = 0):
    """A small dynamic scene rendered from known Gaussians (a ring of cameras; Gaussians drift with time).

    Generated in memory so tests of the training machinery do not depend on data files.
    """
    import numpy as np

    from moegs.cameras import Camera, look_at
    from moegs.data.scene import ArrayImage, Scene, View
    from moegs.render import rasterize

    g = torch.Generator().manual_seed(seed)
    n = 300
    means = torch.randn(n, 3, generator=g) * 0.5
    quats = torch.randn(n, 4, generator=g)
    scales = torch.randn(n, 3, generator=g) * 0.2 - 2.5
    opac = torch.randn(n, generator=g) + 1.0
    cols = torch.rand(n, 3, generator=g)
    velocity = torch.randn(n, 3, generator=g) * 0.2
    views = []
    for ti in range(num_times):
        t = ti / max(1, num_times - 1)
        for i in range(num_views):
            a = 2 * np.pi * i / num_views
            eye = torch.tensor([3.0 * np.cos(a), 3.0 * np.sin(a), 0.8])
            cam = Camera(look_at(eye, torch.zeros(3)), fx=0.9 * width, fy=0.9 * width, cx=width / 2,
                         cy=height / 2, width=width, height=height, time=t, name=f"cam{i:02d}")
            img = rasterize(means + t * velocity, quats, scales, opac, cols, cam, backend="torch").color
            arr = (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            views.append(View(cam, ArrayImage(("toy", seed, i, ti), arr), camera_id=i, frame=ti))
    test = [v for v in views if v.camera_id == 0]
    train = [v for v in views if v.camera_id != 0]
    pts = means + 0.05 * torch.randn(n, 3, generator=g)
    return Scene("toy", "generated", train, test, pts, cols.clone())


@pytest.fixture(scope="session")
def toy_scene():
    return make_toy_scene()


def random_init(n: int, seed: int, times):
    """A ``SceneInit`` of ``n`` random coloured points in ``[-1, 1]^3`` (extent 2) at ``times``."""
    from moegs.experts import SceneInit

    g = torch.Generator().manual_seed(seed)
    return SceneInit(points=torch.rand(n, 3, generator=g) * 2 - 1, colors=torch.rand(n, 3, generator=g),
                     extent=2.0, times=times)


def small_camera(t: float = 0.0):
    """A 40x32 camera 4 units from the origin, looking at it along +y, at time ``t``."""
    from moegs.cameras import Camera, look_at

    return Camera(look_at(torch.tensor([0.0, -4.0, 0.0]), torch.zeros(3)), fx=40.0, fy=40.0, cx=20.0, cy=16.0,
                  width=40, height=32, time=t)


@pytest.fixture(scope="session")
def toy_scene_dir(tmp_path_factory):
    """A tiny generated scene on disk in the N3V layout (3 cameras x 3 frames at 32x24), for CLI tests."""
    from moegs.data.synthetic import SyntheticConfig, generate_scene

    tiny = SyntheticConfig(num_cameras=3, num_frames=3, width=32, height=24, num_points=200)
    return generate_scene(tmp_path_factory.mktemp("scene") / "tiny", tiny)
