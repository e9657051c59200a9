"""Metrics and evaluation helpers."""

from __future__ import annotations

import math

import pytest
import torch

from moegs.eval import evaluate_renderer, psnr, ssim
from moegs.eval.lpips import LPIPS, load_lpips


def test_psnr_of_a_known_error():
    a = torch.full((8, 8, 3), 0.5)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert math.isinf(psnr(a, a))


def test_ssim_identity_and_degradation():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(32, 32, 3, generator=g)
    assert float(ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    noise = torch.randn(32, 32, 3, generator=g)
    scores = [float(ssim((img + s * noise).clamp(0, 1), img)) for s in (0.05, 0.2, 0.5)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_lpips_from_local_weights(tmp_path, monkeypatch):
    model, note = load_lpips(tmp_path / "absent.pt")
    assert model is None and "skipped" in note and "absent.pt" in note
    torch.manual_seed(0)
    weights = LPIPS().state_dict()
    for k in weights:
        if k.startswith("lin"):
            weights[k] = weights[k].abs()  # LPIPS heads are non-negative
    torch.save(weights, tmp_path / "lpips.pt")
    monkeypatch.setenv("MOEGS_LPIPS_WEIGHTS", str(tmp_path / "lpips.pt"))
    model, note = load_lpips()
    assert model is not None and "lpips.pt" in note
    a = torch.rand(64, 64, 3)
    b = (a + 0.3 * torch.randn(64, 64, 3)).clamp(0, 1)
    assert float(model(a, a)) == pytest.approx(0.0, abs=1e-7)
    d_ab, d_ba = float(model(a, b)), float(model(b, a))
    assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-5)
    # A file without the heads is reported, not used.
    torch.save({k: v for k, v in weights.items() if k.startswith("features")}, tmp_path / "partial.pt")
    model, note = load_lpips(tmp_path / "partial.pt")
    assert model is None and "lacks" in note


def test_evaluate_renderer_writes_renders(toy_scene, tmp_path):
    res = evaluate_renderer(lambda v: toy_scene.image(v), toy_scene, out_dir=tmp_path, use_lpips=False)
    assert math.isinf(res["psnr"]) and res["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert res["num_views"] == len(toy_scene.test_views)
    assert len(list(tmp_path.glob("*_gt.png"))) == len(toy_scene.test_views)
