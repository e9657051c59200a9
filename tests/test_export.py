"""Export to the 3DGS PLY layout and to .splat, read back and rendered; bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from conftest import random_init, small_camera
from moegs.cli.main import main
from moegs.eval.metrics import psnr
from moegs.experts import build_expert, render_expert
from moegs.export import ply_fields, read_ply, read_splat
from moegs.render.sh import num_sh_bases
from moegs.train.checkpoint import save_expert

T = 0.3


@pytest.fixture
def expert_ckpt(tmp_path):
    """A spacetime expert with random SH of degree 3 (view-dependent colour), saved as a checkpoint."""
    init = random_init(300, seed=5, times=torch.linspace(0, 1, 6))
    ex = build_expert("spacetime", init)
    ex.sh_degree = 3
    with torch.no_grad():
        ex.splats["shN"].normal_(0, 0.1)
        ex.splats["motion"].normal_(0, 0.05)
        ex.splats["quats"].normal_()
    path = tmp_path / "ex.pt"
    save_expert(path, ex, scene_meta={"extent": init.extent, "times": init.times.tolist()})
    return ex, path


def test_ply_layout_values_and_render(expert_ckpt, tmp_path):
    ex, ckpt = expert_ckpt
    out = tmp_path / "g.ply"
    assert main(["export", str(ckpt), "--time", str(T), "--out", str(out)]) == 0
    v = PlyData.read(str(out))["vertex"]
    assert [p.name for p in v.properties] == ply_fields(3)
    assert len(ply_fields(3)) == 62 and all(p.val_dtype in ("f4", "float32") for p in v.properties)
    with torch.no_grad():
        gs = ex.gaussians_at(T)
    n = len(gs)
    col = lambda *fs: np.stack([v[f] for f in fs], 1)  # noqa: E731
    assert np.allclose(col("x", "y", "z"), gs.means.detach().numpy(), atol=1e-6)
    assert np.allclose(col("rot_0", "rot_1", "rot_2", "rot_3"), gs.quats.detach().numpy(), atol=1e-6)
    assert np.allclose(col("scale_0", "scale_1", "scale_2"), gs.log_scales.detach().numpy(), atol=1e-6)
    assert np.allclose(v["opacity"], gs.opacity_logits.detach().numpy(), atol=1e-6)
    assert np.allclose(col("f_dc_0", "f_dc_1", "f_dc_2"), gs.colors_tensor()[:, 0].detach().numpy(), atol=1e-6)
    # f_rest is channel-major: the 15 higher coefficients of red, then green, then blue.
    rest = col(*[f"f_rest_{i}" for i in range(45)]).reshape(n, 3, 15)
    assert np.allclose(rest, gs.colors_tensor()[:, 1:16].permute(0, 2, 1).detach().numpy(), atol=1e-6)
    # Re-imported, the Gaussians render the expert's image.
    cam = small_camera()
    back = read_ply(out)
    assert back.sh_degree == 3 and back.colors.shape == (n, num_sh_bases(3), 3)
    with torch.no_grad():
        want = render_expert(ex, cam, T, backend="cpu").color
        got = back.render(cam, backend="cpu").color
    assert psnr(got, want) > 60.0


def test_splat_within_its_quantisation(expert_ckpt, tmp_path):
    ex, ckpt = expert_ckpt
    out = tmp_path / "g.splat"
    assert main(["export", str(ckpt), "--time", str(T), "--out", str(out), "--format", "splat"]) == 0
    back = read_splat(out)
    with torch.no_grad():
        gs = ex.gaussians_at(T)
    assert out.stat().st_size == 32 * len(gs)
    # Sorted by importance; as sets, positions are exact and the 8-bit values within half a step.
    order = torch.argsort(-(torch.exp(gs.log_scales).prod(-1) * torch.sigmoid(gs.opacity_logits)), stable=True)
    assert torch.equal(back.means, gs.means[order])
    assert (torch.sigmoid(back.opacity_logits) - torch.sigmoid(gs.opacity_logits[order])).abs().max() <= 0.5 / 255 + 1e-6
    # .splat keeps DC colour only: compare with the expert rendered at SH degree 0.
    ex.sh_degree = 0
    cam = small_camera()
    with torch.no_grad():
        want = render_expert(ex, cam, T, backend="cpu").color
        got = back.render(cam, backend="cpu").color
    # Measured 64 dB here (8-bit colour, opacity and rotation); the bar leaves room for the quantisation.
    assert psnr(got, want) > 45.0


def test_time_sequence_is_numbered_and_follows_the_motion(expert_ckpt, tmp_path):
    ex, ckpt = expert_ckpt
    assert main(["export", str(ckpt), "--times", "0:1:3", "--out", str(tmp_path / "seq.ply")]) == 0
    files = sorted(tmp_path.glob("seq_*.ply"))
    assert [f.name for f in files] == ["seq_0000.ply", "seq_0001.ply", "seq_0002.ply"]
    for f, t in zip(files, (0.0, 0.5, 1.0)):
        with torch.no_grad():
            assert torch.allclose(read_ply(f).means, ex.gaussians_at(t).means, atol=1e-6)
    assert not torch.allclose(read_ply(files[0]).means, read_ply(files[2]).means)


def test_mixture_exports_each_expert(toy_scene, tmp_path, capsys):
    from moegs.moe import MoEConfig, build_mixture, expert_meta, save_mixture

    experts = [build_expert(n, random_init(200, seed=k, times=torch.linspace(0, 1, 3)))
               for k, n in enumerate(("static", "keyframe"))]
    mixture, _ = build_mixture(experts, toy_scene, MoEConfig(device="cpu", prior_weight=0.0))
    metas = [expert_meta(e, {"extent": 2.0, "times": [0.0, 0.5, 1.0]}) for e in experts]
    save_mixture(tmp_path / "m.pt", mixture, MoEConfig(), metas)
    assert main(["export", str(tmp_path / "m.pt"), "--time", "0.5", "--out", str(tmp_path / "mix")]) == 0
    assert "no single PLY" in capsys.readouterr().out
    for name, e in zip(("static", "keyframe"), experts):
        with torch.no_grad():
            assert torch.allclose(read_ply(tmp_path / "mix" / f"{name}.ply").means, e.gaussians_at(0.5).means)


@pytest.mark.parametrize("case", ["no_checkpoint", "time", "times", "unwritable", "prune_expert", "prune_share"])
def test_bad_input_is_one_line_and_writes_nothing(case, expert_ckpt, tmp_path, capsys):
    _, ckpt = expert_ckpt
    (tmp_path / "emptyrun").mkdir()
    (tmp_path / "afile").write_text("x")
    argv = {"no_checkpoint": ["export", str(tmp_path / "emptyrun"), "--out", str(tmp_path / "o.ply")],
            "time": ["export", str(ckpt), "--time", "1.5", "--out", str(tmp_path / "o.ply")],
            "times": ["export", str(ckpt), "--times", "0:2", "--out", str(tmp_path / "o.ply")],
            "unwritable": ["export", str(ckpt), "--out", str(tmp_path / "afile" / "sub" / "o.ply")],
            "prune_expert": ["export", str(ckpt), "--prune", "0.97", "--out", str(tmp_path / "o.ply")],
            "prune_share": ["export", str(ckpt), "--prune", "1.5", "--out", str(tmp_path / "o.ply")]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moegs: error:"), err
    assert not list(tmp_path.glob("o*.ply")) and not list(tmp_path.rglob(".*.tmp"))
