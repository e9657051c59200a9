"""``inspect_scene`` / ``print_inspection``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import data_path
from rich.console import Console
from test_n3v import ring_c2w, write_n3v_scene

from moegs.data import DataConfig
from moegs.data.inspect import inspect_scene, print_inspection


def test_inspect_generated_n3v(tmp_path):
    write_n3v_scene(tmp_path / "s", ring_c2w(3), frames=5)
    cfg = DataConfig(format="n3v", num_random_points=40)
    facts = inspect_scene(tmp_path / "s", cfg)
    assert facts["format"] == "n3v" and facts["on_disk"] == {"videos": 3}
    assert (facts["cameras"], facts["frames"], facts["views_listed"]) == (3, 5, 15)
    assert facts["resolution_original"] == (32, 24) and facts["resolution_loaded"] == (16, 12)
    assert facts["time_range"] == (0.0, 1.0)
    assert facts["near_range"] == (0.5, 0.5)  # poses_bounds.npy's near bound
    assert inspect_scene(tmp_path / "s", DataConfig(format="n3v", num_random_points=40, near=0.8))["near_range"] == (0.8, 0.8)
    assert (facts["train_views"], facts["test_views"], facts["initial_points"]) == (10, 5, 40)
    c = ring_c2w(3)[1:, :3, 3]  # centres of the training cameras 1 and 2
    assert facts["extent"] == pytest.approx(1.1 * np.linalg.norm(c - c.mean(0), axis=1).max(), rel=1e-4)
    out = io.StringIO()
    print_inspection(tmp_path / "s", cfg, console=Console(file=out, width=120))
    text = out.getvalue()
    assert "n3v" in text and "16x12" in text and "32x24" in text and "cam00.mp4: 5" in text
    assert "near planes" in text


def test_inspect_reports_present_vs_listed_images():
    with pytest.warns(UserWarning, match="18 of the 21 images"):
        facts = inspect_scene(data_path("n3v_flame_steak_frame0"), DataConfig(format="colmap"))
    assert facts["on_disk"] == {"images": 3, "images listed in model": 21}
    assert "error" not in facts and facts["train_views"] == 3
