"""Tests of the mixture of experts: normalisation, gradient flow, routing on a constructed scene,
checkpoints and resume, the uniform ablation, corrupt checkpoints."""

from __future__ import annotations

import copy

import math
import shutil

import numpy as np
import pytest
import torch

from moegs import io
from moegs.cameras import Camera
from moegs.data import Scene, View
from moegs.errors import CheckpointError, ConfigError
from moegs.experts import CanonicalConfig, SceneInit
from moegs.experts.static import StaticConfig, StaticGaussians
from moegs.moe import ROUTERS, MixtureTrainer, MoEConfig, build_mixture, expert_meta, load_mixture, train_mixture
from moegs.render import rgb_to_sh0
from moegs.train.checkpoint import save_expert

W, H = 32, 24


class ArraySource:
    """An in-memory image."""

    def __init__(self, key: str, arr: np.ndarray) -> None:
        self.key = key
        self.arr = arr

    def load(self) -> np.ndarray:
        return self.arr


def plane_expert(corrupt: str | None) -> StaticGaussians:
    """A static expert: a grid of opaque Gaussians on the plane z = 0 with a smooth colour pattern;
    ``corrupt`` = ``"left"`` (x < 0) or ``"right"`` (x > 0) inverts the colours of that half."""
    xs, ys = torch.meshgrid(torch.linspace(-1.3, 1.3, 27), torch.linspace(-1.0, 1.0, 21), indexing="xy")
    pts = torch.stack((xs.flatten(), ys.flatten(), torch.zeros(xs.numel())), -1)
    col = torch.stack((0.5 + 0.4 * torch.sin(3 * pts[:, 0]), 0.5 + 0.4 * torch.cos(4 * pts[:, 1]),
                       0.5 + 0.3 * torch.sin(2 * (pts[:, 0] + pts[:, 1]))), -1)
    if corrupt is not None:
        sel = pts[:, 0] < 0 if corrupt == "left" else pts[:, 0] > 0
        col[sel] = 1.0 - col[sel]
    e = StaticGaussians(SceneInit(pts, col, extent=1.0, times=torch.tensor([0.0, 0.5, 1.0])),
                        StaticConfig(gaussians=CanonicalConfig(sh_degree=0, init_opacity=0.95)))
    with torch.no_grad():
        e.splats["scales"].fill_(math.log(0.07))
        e.splats["sh0"].copy_(rgb_to_sh0(col)[:, None])
    return e


def camera(x: float, y: float, t: float, name: str) -> Camera:
    w2c = torch.eye(4)
    w2c[:3, 3] = torch.tensor([-x, -y, 3.0])  # camera at (x, y, -3) looking along +z
    return Camera(w2c, fx=48.0, fy=48.0, cx=W / 2, cy=H / 2, width=W, height=H, time=t, name=name)


def plane_scene() -> Scene:
    gt = plane_expert(None)
    views = []
    for i, (x, y) in enumerate([(0.0, 0.0), (0.08, 0.0), (-0.08, 0.05), (0.0, -0.06), (0.05, 0.06), (-0.05, -0.04)]):
        for t in (0.0, 0.5, 1.0):
            cam = camera(x, y, t, f"cam{i}_t{t}")
            with torch.no_grad():
                img = gt.gaussians_at(t).render(cam, backend="torch").color
            views.append(View(cam, ArraySource(cam.name, img.numpy().astype(np.float32)), camera_id=i))
    test = [v for v in views if v.camera_id == 0]
    train = [v for v in views if v.camera_id != 0]
    return Scene("plane", "memory", train, test, gt.splats["means"].detach().clone(), torch.full((567, 3), 0.5))


@pytest.fixture(scope="module")
def scene():
    return plane_scene()


def small_config(**kw) -> MoEConfig:
    cfg = dict(steps=20, checkpoint_every=10, log_every=10, backend="auto", device="cpu", eval_at_end=False,
               hidden=16, prior_views=4)
    cfg.update(kw)
    return MoEConfig(**cfg)


def make_mixture(scene, router: str, **kw):
    experts = [plane_expert("left"), plane_expert("right")]
    cfg = small_config(router=router, **kw)
    mixture, info = build_mixture(experts, scene, cfg)
    metas = [expert_meta(e, {"extent": 1.0, "times": scene.times}) for e in experts]
    return mixture, cfg, metas, info


@pytest.mark.parametrize("router", ROUTERS)
def test_weights_sum_to_one(scene, router):
    mixture, *_ = make_mixture(scene, router, prior_weight=0.7)
    with torch.no_grad():
        for p in mixture.router.parameters():  # away from the (uniform-ish) start
            p.add_(0.5 * torch.randn_like(p))
        out = mixture.render(scene.test_views[0])
    assert out.weights.shape == (H, W, 2) and out.expert_colors.shape == (2, H, W, 3)
    assert torch.allclose(out.weights.sum(-1), torch.ones(H, W), atol=1e-5)
    assert (out.weights >= 0).all()
    assert torch.allclose(out.color, torch.einsum("hwk,khwc->hwc", out.weights, out.expert_colors), atol=1e-6)


@pytest.mark.parametrize("router", ROUTERS)
def test_router_inputs_from_a_camera_equal_given_rays(scene, router):
    from moegs.moe import RouterInputs

    mixture, *_ = make_mixture(scene, router, prior_weight=0.7)
    cam = scene.test_views[0].camera
    g = torch.Generator().manual_seed(3)
    common = dict(t=0.4, expert_colors=torch.rand(2, H, W, 3, generator=g), gate_maps=torch.rand(H, W, 2, 3, generator=g),
                  origin=cam.center, alphas=torch.rand(H, W, 2, generator=g))
    with torch.no_grad():
        for p in mixture.router.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
        lazy = RouterInputs(rays=None, camera=cam, **common)
        w, logits = mixture.router(lazy)
        w_ref, logits_ref = mixture.router(RouterInputs(rays=cam.ray_directions(), **common))
    assert torch.equal(logits, logits_ref) and torch.allclose(w, w_ref, atol=1e-7)
    assert (lazy.rays is None) == (router in ("uniform", "image", "gates"))  # made only where read
    with pytest.raises(ValueError, match="rays or a camera"):
        RouterInputs(rays=None, **common).directions()


def test_uniform_is_the_plain_average(scene):
    mixture, *_ = make_mixture(scene, "uniform")
    with torch.no_grad():
        out = mixture.render(scene.test_views[1])
        a = mixture.experts[0].gaussians_at(0.5).render(scene.test_views[1].camera, backend="torch").color
        b = mixture.experts[1].gaussians_at(0.5).render(scene.test_views[1].camera, backend="torch").color
    assert torch.allclose(out.color, 0.5 * (a + b), atol=1e-5)


@pytest.mark.parametrize("gate", ["linear", "mlp"])
def test_stage2_gradients_reach_gates_and_decoder_not_experts(scene, gate):
    mixture, cfg, metas, _ = make_mixture(scene, "full", gate=gate)
    before = {k: v.detach().clone() for k, v in mixture.experts.state_dict().items()}
    gates_before = [{k: v.detach().clone() for k, v in g.per_gaussian.items()} for g in mixture.gates]
    trainer = MixtureTrainer(mixture, scene, cfg, metas)
    for _ in range(3):  # the decoder's output layer starts at zero: after a step every layer gets gradients
        trainer.train_step()
    out = mixture.render(scene.train_views[0])
    ((out.color - scene.image(scene.train_views[0])) ** 2).mean().backward()
    for g in mixture.gates:
        for p in g.per_gaussian.values():
            assert p.grad is not None and p.grad.abs().sum() > 0
    for p in mixture.router.decoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in mixture.experts.parameters():
        assert p.grad is None and not p.requires_grad
    for k, v in mixture.experts.state_dict().items():
        assert torch.equal(v, before[k]), k
    moved = [not torch.equal(g.per_gaussian[k], gb[k]) for g, gb in zip(mixture.gates, gates_before) for k in gb]
    assert all(moved)


@pytest.mark.parametrize("router", ["pixel_rgb", "gates", "full", "published"])
def test_router_routes_each_half_to_the_right_expert(scene, router):
    # Expert 0 has the wrong colours on the left (x < 0, image left), expert 1 on the right.
    mixture, cfg, metas, _ = make_mixture(scene, router, steps=300, prior_weight=0.0, ssim_lambda=0.0)
    MixtureTrainer(mixture, scene, cfg, metas).train(progress=False)
    shares = []
    with torch.no_grad():
        for v in scene.test_views:
            w = mixture.render(v).weights
            left, right = w[4:-4, : int(0.4 * W)], w[4:-4, int(0.6 * W):]
            shares.append((float(left[..., 1].mean()), float(right[..., 0].mean())))
    for left_to_1, right_to_0 in shares:
        assert left_to_1 > 0.8 and right_to_0 > 0.8, shares


def test_region_psnr_pools_each_region_over_the_views(scene):
    from moegs.moe import region_psnr

    mixture, *_ = make_mixture(scene, "gates", prior_weight=0.7)
    views = scene.test_views

    def labels(v):  # left third region 0, right third region 2, the middle in none; region 1 never seen
        lab = torch.full((H, W), -1, dtype=torch.int64)
        lab[:, : W // 3], lab[:, -(W // 3):] = 0, 2
        return lab

    rows = region_psnr(mixture, scene, views, labels, ["left", "unseen", "right"])
    assert [r["region"] for r in rows] == ["left", "right"]
    with torch.no_grad():
        outs = [mixture.render(v) for v in views]
    for r, cols in zip(rows, (slice(0, W // 3), slice(W - W // 3, W))):
        assert r["share"] == pytest.approx((W // 3) / W)
        gts = torch.stack([scene.image(v)[:, cols] for v in views])
        images = [torch.stack([o.color[:, cols] for o in outs])] + [
            torch.stack([o.expert_colors[k][:, cols] for o in outs]) for k in range(2)]
        want = [float(-10 * torch.log10(((x.clamp(0, 1) - gts) ** 2).mean())) for x in images]
        assert r["mixture_psnr"] == pytest.approx(want[0], abs=1e-4)
        assert r["expert_psnr"] == pytest.approx(want[1:], abs=1e-4)
        assert r["best_expert"] == int(np.argmax(want[1:]))
    # the shares of the mixture's squared error: each region's pooled error, over both regions'
    mse = [10 ** (-r["mixture_psnr"] / 10) for r in rows]
    assert [r["error_share"] for r in rows] == pytest.approx([m / sum(mse) for m in mse], abs=1e-6)
    # expert 0 is wrong on the left, expert 1 on the right: each region's best is the other one
    assert [r["best_expert"] for r in rows] == [1, 0]


def _expert_ckpts(tmp_path, scene):
    paths = []
    for i, c in enumerate(("left", "right")):
        p = tmp_path / f"expert{i}.pt"
        save_expert(p, plane_expert(c), None, scene_meta={"extent": 1.0, "times": scene.times})
        paths.append(p)
    return paths


def test_checkpoint_save_load_and_resume_reproduces(tmp_path, scene):
    ckpts = _expert_ckpts(tmp_path, scene)
    cfg = small_config(router="full", steps=12, joint_steps=8, checkpoint_every=10)
    train_mixture(ckpts, scene, cfg, tmp_path / "full_run", progress=False)
    full, _ = load_mixture(tmp_path / "full_run" / "checkpoints" / "last.pt")
    # Interrupted at step 10 (stage 2), resumed across the switch to stage 3.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full_run" / "checkpoints" / "step_000010.pt", resumed_dir / "checkpoints" / "last.pt")
    summary = train_mixture(ckpts, scene, cfg, resumed_dir, resume=True, progress=False)
    assert summary["steps"] == 20
    resumed, payload = load_mixture(resumed_dir / "checkpoints" / "last.pt")
    assert payload["trainer"]["stage"] == 3
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    # Stage 3 changed the experts, and the loaded mixture renders like the trained one.
    e0 = plane_expert("left")
    assert not torch.allclose(full.experts[0].splats["sh0"], e0.splats["sh0"])
    with torch.no_grad():
        assert torch.allclose(full.render(scene.test_views[0]).color, resumed.render(scene.test_views[0]).color,
                              atol=1e-5)


def test_resume_refuses_experts_whose_files_changed(tmp_path, scene):
    """A run resumed over expert checkpoints that were retrained into the same paths would continue with the
    old experts: the mixture records each file's digest and refuses."""
    ckpts = _expert_ckpts(tmp_path, scene)
    cfg = small_config(router="gates", steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    train_mixture(ckpts, scene, cfg, run, progress=False)
    _, payload = load_mixture(run / "checkpoints" / "last.pt")
    assert [m["digest"] for m in payload["experts"]] == [io.file_digest(p) for p in ckpts]
    train_mixture(ckpts, scene, cfg, run, resume=True, progress=False)  # the same files: resumes (nothing left)
    save_expert(ckpts[1], plane_expert(None), None, scene_meta={"extent": 1.0, "times": scene.times})
    with pytest.raises(ConfigError, match="expert1.pt"):
        train_mixture(ckpts, scene, cfg, run, resume=True, progress=False)


def test_corrupt_mixture_checkpoint_raises(tmp_path, scene):
    ckpts = _expert_ckpts(tmp_path, scene)
    run = tmp_path / "run"
    train_mixture(ckpts, scene, small_config(router="gates", steps=2, checkpoint_every=2), run, progress=False)
    good = (run / "checkpoints" / "last.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        load_mixture(bad)
    with pytest.raises(CheckpointError):  # an expert checkpoint is not a mixture checkpoint
        load_mixture(ckpts[0])
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("gates.")}
    torch.save(payload, tmp_path / "no_gates.pt")
    with pytest.raises(CheckpointError):
        load_mixture(tmp_path / "no_gates.pt")


def test_contributions_match_the_definition(scene):
    """c_i = sum_p w_k(p) T_i(p) alpha_i(p), checked by splatting a one-hot channel for a few Gaussians."""
    from moegs.moe.prune import contributions

    mixture, *_ = make_mixture(scene, "full", prior_weight=0.8)
    view = scene.test_views[0]
    c = contributions(mixture, [view])
    with torch.no_grad():
        w = mixture.render(view).weights
        for k, expert in enumerate(mixture.experts):
            gs = expert.gaussians_at(view.time)
            for i in torch.linspace(0, len(gs) - 1, 5).long().tolist():
                onehot = torch.zeros(len(gs), 1)
                onehot[i] = 1.0
                img = gs.render(view.camera, extras=onehot, background=mixture.background).extras[..., 0]
                assert float(c[k][i]) == pytest.approx(float((w[..., k] * img).sum()), rel=1e-4, abs=1e-6)


def test_gate_prune_drops_what_the_blend_does_not_use_and_keeps_alignment(scene):
    from moegs.moe.prune import gate_prune

    mixture, *_ = make_mixture(scene, "gates")
    n0, n1 = (e.splats["means"].shape[0] for e in mixture.experts)
    with torch.no_grad():
        mixture.gates[1].per_gaussian["w"].fill_(-30.0)  # the router never uses expert 1
        before = mixture.render(scene.test_views[0]).color
    report = gate_prune(mixture, scene.train_views, keep=0.99)
    assert report["keep"] == 0.99 and report["threshold"] > 0
    assert report["removed"][1] == n1 - 1 and report["after"][1] == 1  # all but its largest contributor
    assert 0 < report["removed"][0] < n0  # expert 0 loses only Gaussians that no view sees
    for gate, expert in zip(mixture.gates, mixture.experts):
        assert all(v.shape[0] == expert.splats["means"].shape[0] for v in gate.per_gaussian.values())
    with torch.no_grad():
        after = mixture.render(scene.test_views[0]).color
    assert (after - before).abs().max() < 0.02


def test_contribution_threshold_is_a_share_of_the_blend():
    from moegs.moe.prune import contribution_threshold

    contrib = [torch.tensor([5.0, 1.0]), torch.tensor([3.0, 1.0, 0.0])]  # 10 px in all, over two experts
    assert contribution_threshold(contrib, 0.5) == 5.0  # the largest alone carries half
    assert contribution_threshold(contrib, 0.8) == 3.0
    assert contribution_threshold(contrib, 0.85) == 1.0  # ties stay together
    assert contribution_threshold(contrib, 1.0) == 0.0  # everything stays
    # A share does not depend on the scale of the contributions (image size, Gaussian count) ...
    for keep in (0.3, 0.5, 0.8, 0.95):
        assert contribution_threshold([7 * c for c in contrib], keep) == 7 * contribution_threshold(contrib, keep)
    # ... and the kept Gaussians carry at least the share, one fewer would not.
    c = torch.rand(1000, generator=torch.Generator().manual_seed(0)) ** 4
    for keep in (0.5, 0.8, 0.97):
        thr = contribution_threshold([c], keep)
        kept = c[c >= thr].sort(descending=True).values
        assert kept.sum() >= keep * c.sum() * (1 - 1e-6) and kept[:-1].sum() < keep * c.sum()
    assert contribution_threshold([torch.zeros(3)], 0.5) == 0.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="keep"):
            contribution_threshold(contrib, bad)


def test_prune_and_finetune_recovers_what_pruning_alone_loses(scene):
    from moegs.eval import evaluate_renderer
    from moegs.moe.config import PruneConfig
    from moegs.moe.prune import prune_and_finetune

    mixture, cfg, metas, _ = make_mixture(scene, "gates", steps=60)
    MixtureTrainer(mixture, scene, cfg, metas).train(progress=False)
    n = [e.splats["means"].shape[0] for e in mixture.experts]
    KEEP = 0.7  # of the blend's contributions

    def pruned(steps: int):
        m = copy.deepcopy(mixture)
        cfg.prune = PruneConfig(keep=KEEP, views=6, steps=steps, lr_scale=1.0)
        report = prune_and_finetune(m, scene, cfg, metas)
        with torch.no_grad():
            q = evaluate_renderer(lambda v: m.render(v).color, scene, scene.train_views, use_lpips=False)["psnr"]
        return m, report, q

    with torch.no_grad():
        full = evaluate_renderer(lambda v: mixture.render(v).color, scene, scene.train_views, use_lpips=False)["psnr"]
    only, r0, q0 = pruned(0)
    tuned, r1, q1 = pruned(60)
    assert r0["after"] == r1["after"] and r0["steps"] == 0 and r1["steps"] == 60
    assert all(0 < a < b for a, b in zip(r1["after"], n))  # the same Gaussians go either way
    assert [e.splats["means"].shape[0] for e in tuned.experts] == r1["after"]
    assert q0 < full - 2.0  # pruning this hard costs the image (measured 24.2 -> 19.8 dB) ...
    assert q1 > q0 + 1.5  # ... and the joint fine-tuning wins much of it back (22.7 dB)
    assert not any(p.requires_grad for e in tuned.experts for p in e.parameters())  # frozen again
    assert all(p.requires_grad for p in tuned.gates.parameters())


def test_viz_writes_figures_video_and_histogram(tmp_path, scene):
    from moegs.moe.viz import frame_panel, render_weight_video, save_weight_figure, usage_histogram

    mixture, *_ = make_mixture(scene, "full", prior_weight=0.9)
    with torch.no_grad():
        out = mixture.render(scene.test_views[0])
    panel = frame_panel(out, mixture.names)
    assert panel.shape[1] == 4 * W and panel.shape[0] > H and panel.dtype == np.uint8
    assert save_weight_figure(out, mixture.names, tmp_path / "w.png", gt=scene.image(scene.test_views[0])).is_file()
    assert render_weight_video(mixture, scene.test_views[0].camera, [0.0, 0.5, 1.0], tmp_path / "w.mp4").is_file()
    hist = usage_histogram(mixture, scene, tmp_path / "usage.png")
    assert (tmp_path / "usage.png").is_file()
    assert abs(sum(hist["usage"]) - 1.0) < 1e-5 and hist["usage"][0] > 0.85  # the prior favours expert 0 (tie)


def test_ablation_table(tmp_path, scene):
    from moegs.moe.ablation import format_table, run_ablation

    rows = run_ablation(_expert_ckpts(tmp_path, scene), scene, small_config(steps=5), tmp_path / "abl",
                        routers=("uniform", "image"))
    assert [r["router"] for r in rows] == ["uniform", "image"]
    assert all(math.isfinite(r["test_psnr"]) for r in rows)
    table = format_table(rows, ["router", "description", "test_psnr"])
    assert "uniform average" in table and len(table.splitlines()) == 4


def test_single_pass_and_k_passes_train_alike(scene):
    """Stage 2 then stage 3 with the one-pass renderer and with one pass per expert: the same loss curve."""
    curves = []
    for single in (True, False):
        torch.manual_seed(0)
        mixture, cfg, metas, _ = make_mixture(scene, "full", steps=8, joint_steps=4, single_pass=single)
        trainer = MixtureTrainer(mixture, scene, cfg, metas)
        curves.append([trainer.train_step()["loss"] for _ in range(12)])
    assert np.allclose(curves[0], curves[1], rtol=1e-4, atol=1e-6), curves


def test_frozen_render_cache(scene):
    """Frozen experts: a second render of a view is served from the cache and equals a fresh one; a
    changed expert parameter, unfreezing and cache_mb=0 all bypass it."""
    mixture, *_ = make_mixture(scene, "full")
    mixture.set_experts_trainable(False)
    view = scene.train_views[2]
    first = mixture.render(view)
    assert len(mixture._cache) == 1
    again = mixture.render(view)
    assert len(mixture._cache) == 1 and torch.equal(first.color, again.color)
    twin = copy.deepcopy(mixture)  # a copy (pruning one, the viewer) starts with an empty cache
    assert len(twin._cache) == 0 and len(mixture._cache) == 1
    assert torch.equal(twin.render(view).color, first.color)
    with torch.no_grad():
        mixture.experts[0].splats["means"][:, 0] += 0.05
    moved = mixture.render(view)
    assert len(mixture._cache) == 2 and not torch.allclose(moved.expert_colors[0], first.expert_colors[0])
    fresh = mixture.render(view)
    mixture.cache_mb = 0.0
    uncached = mixture.render(view)
    assert torch.allclose(fresh.color, uncached.color, atol=1e-5)  # the cache composites by the weights
    mixture.cache_mb = 512.0
    mixture.set_experts_trainable(True)
    assert len(mixture._cache) == 0
    mixture.render(view)
    assert len(mixture._cache) == 0  # experts trainable: nothing cached
    # A render without gradients caches the projection and bins only; a training render of the same view
    # then adds the compositing weights to that entry, and both agree.
    mixture.set_experts_trainable(False)
    with torch.no_grad():
        plain = mixture.render(view)
    (entry,) = mixture._cache.values()
    assert entry.weights is None and entry.base is None
    trained = mixture.render(view)
    (entry,) = mixture._cache.values()
    assert entry.weights is not None and trained.color.requires_grad
    assert torch.allclose(plain.color, trained.color, atol=1e-5)


def test_pruning_contributions_one_pass_match_k_passes(scene):
    from moegs.moe.prune import contributions

    mixture, *_ = make_mixture(scene, "full")
    one = contributions(mixture, scene.train_views[:3])
    mixture.single_pass = False
    many = contributions(mixture, scene.train_views[:3])
    for a, b in zip(one, many):
        assert a.max() > 0.5 and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_efficiency_table_rows(scene):
    from moegs.moe.efficiency import efficiency_table, format_efficiency_table
    from moegs.moe.prune import gate_prune

    mixture, *_ = make_mixture(scene, "full")
    rows = {r["model"]: r for r in efficiency_table(
        mixture, scene, prune=lambda m: gate_prune(m, scene.train_views[:4], 0.9), repeats=1)}
    assert list(rows) == ["static#0", "static#1", "mixture K-pass", "mixture single-pass", "pruned K-pass",
                          "pruned single-pass"]
    for label in ("mixture", "pruned"):
        assert abs(rows[f"{label} K-pass"]["psnr"] - rows[f"{label} single-pass"]["psnr"]) < 1e-3
    assert rows["mixture K-pass"]["gaussians"] == 2 * 567
    assert 0 < rows["pruned single-pass"]["gaussians"] < rows["mixture single-pass"]["gaussians"]
    assert all(r["fps"] > 0 and r["mb"] > 0 for r in rows.values())
    assert mixture.num_experts == 2 and sum(e.splats["means"].shape[0] for e in mixture.experts) == 2 * 567
    assert "pruned single-pass" in format_efficiency_table(list(rows.values()))
