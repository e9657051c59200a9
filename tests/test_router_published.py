"""The published router (three-channel gates, shared per-expert decoder), its generalisation switches,
the per-pixel oracle and the router-masked distillation."""

from __future__ import annotations

import pytest
import torch

from moegs.eval import evaluate_expert
from moegs.eval.metrics import psnr
from moegs.moe import MixtureTrainer, PublishedGate, Router, RouterInputs, published_config
from moegs.moe.distill import DistillTrainer, distill, finetune, finetune_config, masked_distill_loss, teacher_targets
from moegs.moe.evaluate import blend_oracle_image, oracle_headroom, oracle_image
from moegs.train import TrainConfig

from test_moe import H, W, make_mixture, plane_scene


@pytest.fixture(scope="module")
def scene():
    return plane_scene()


def _inputs(K: int, C: int = 3, seed: int = 0) -> RouterInputs:
    g = torch.Generator().manual_seed(seed)
    rays = torch.nn.functional.normalize(torch.randn(H, W, 3, generator=g), dim=-1)
    return RouterInputs(t=0.3, rays=rays, expert_colors=torch.rand(K, H, W, 3, generator=g),
                        gate_maps=torch.rand(H, W, K, C, generator=g), origin=torch.tensor([0.5, -1.0, 2.0]),
                        alphas=torch.rand(H, W, K, generator=g))


def test_published_shapes_and_parameter_count(scene):
    r = Router("published", 3)
    assert sum(p.numel() for p in r.parameters()) == 8 * 6 + 6 * 3 + 3 * 1  # 69, no bias
    assert all(m.bias is None for m in r.decoder.net if isinstance(m, torch.nn.Conv2d))
    assert Router("published", 3, view_inputs="none").decoder.net[0].weight.shape == (6, 2, 1, 1)
    gate = PublishedGate(7, init=0.9)
    vals = gate(None, 0.25)
    assert vals.shape == (7, 3) and gate.channels == 3
    with torch.no_grad():
        gate.per_gaussian["f"].fill_(2.0)
    assert torch.allclose(gate(None, 0.25), torch.tensor([0.9, 0.9, 0.5]).expand(7, 3))
    mixture, *_ = make_mixture(scene, "published")
    out = mixture.render(scene.test_views[0])
    assert out.weights.shape == (H, W, 2) and out.gate_maps.shape == (H, W, 2, 3)
    assert torch.allclose(out.weights.sum(-1), torch.ones(H, W), atol=1e-5)


def test_published_logits_are_static_weight_plus_shared_decoder():
    torch.manual_seed(0)
    r = Router("published", 3, temperature=0.5)
    for p in r.parameters():
        torch.nn.init.normal_(p)
    x = _inputs(3)
    w1, w2, w3 = (m.weight[:, :, 0, 0] for m in r.decoder.net if isinstance(m, torch.nn.Conv2d))
    g = x.gate_maps + (1.0 - x.alphas)[..., None]  # composited over the unit background
    view = torch.cat((x.origin.expand(H, W, 3), x.rays), -1)
    expected = torch.empty(H, W, 3)
    for k in range(3):  # the same decoder for every expert
        h = torch.cat((g[:, :, k, 1:3], view), -1)
        phi = torch.relu(torch.relu(h @ w1.T) @ w2.T) @ w3.T
        expected[..., k] = g[:, :, k, 0] + phi[..., 0]
    weights, logits = r(x)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(weights, torch.softmax(expected / 0.5, -1), atol=1e-5)


def test_view_jitter_and_dropout_act_in_training_only():
    torch.manual_seed(0)
    r = Router("published", 2, ray_jitter=0.1, view_dropout=0.5)
    for p in r.parameters():
        torch.nn.init.normal_(p)
    x = _inputs(2)
    r.eval()
    a, b = r.logits(x), r.logits(x)
    assert torch.equal(a, b)
    plain = Router("published", 2)
    plain.load_state_dict(r.state_dict())
    assert torch.allclose(plain.logits(x), a)  # eval mode: exactly the unperturbed router
    r.train()
    assert not torch.allclose(r.logits(x), a)


def test_router_losses_add_tv_and_entropy_terms(scene):
    mixture, cfg, metas, _ = make_mixture(scene, "published", tv_weight=0.3, entropy_weight=0.2, prior_weight=0.7)
    trainer = MixtureTrainer(mixture, scene, cfg, metas)
    v = scene.train_views[0]
    out = mixture.render(v)
    target = scene.image(v)
    loss, terms = trainer.loss(out, target, 2, 0)
    w = out.weights.detach()
    tv = (w[1:] - w[:-1]).abs().mean() + (w[:, 1:] - w[:, :-1]).abs().mean()
    ent = -(w * w.log()).sum(-1).mean()
    assert terms["tv"] == pytest.approx(float(tv), rel=1e-5) and terms["entropy"] == pytest.approx(float(ent), rel=1e-5)
    base, _ = MixtureTrainer(mixture, scene, published_config(**{k: getattr(cfg, k) for k in ("ssim_lambda",)}),
                             metas).loss(out, target, 2, 0)
    assert float(loss.detach()) == pytest.approx(float(base.detach()) + 0.3 * float(tv) + 0.2 * float(ent), rel=1e-5)


def test_oracle_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    colors = torch.rand(3, 5, 4, 3, generator=g) * 1.2 - 0.1  # some values outside [0, 1]
    target = torch.rand(5, 4, 3, generator=g)
    got = oracle_image(colors, target)
    for i in range(5):
        for j in range(4):
            errs = [float(((colors[k, i, j].clamp(0, 1) - target[i, j]) ** 2).sum()) for k in range(3)]
            assert torch.equal(got[i, j], colors[min(range(3), key=errs.__getitem__), i, j].clamp(0, 1))
    with pytest.raises(ValueError):
        oracle_image(colors, target[:4])


def test_block_oracle_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    colors = torch.rand(3, 7, 10, 3, generator=g) * 1.2 - 0.1
    target = torch.rand(7, 10, 3, generator=g)
    assert torch.equal(oracle_image(colors, target, 1), oracle_image(colors, target))
    c = colors.clamp(0, 1)
    for b in (2, 3, 4, 16):
        got = oracle_image(colors, target, b)
        for i0 in range(0, 7, b):
            for j0 in range(0, 10, b):  # edge tiles are smaller than b x b
                tile = (slice(i0, i0 + b), slice(j0, j0 + b))
                errs = [float(((c[k][tile] - target[tile]) ** 2).sum()) for k in range(3)]
                assert torch.equal(got[tile], c[min(range(3), key=errs.__getitem__)][tile])
    # one tile over the whole image: the best expert of that image
    whole = oracle_image(colors, target, 16)
    assert any(torch.equal(whole, c[k]) for k in range(3))
    with pytest.raises(ValueError):
        oracle_image(colors, target, 0)


def test_blend_oracle_is_the_best_blend_per_tile():
    g = torch.Generator().manual_seed(4)
    colors = torch.rand(3, 9, 10, 3, generator=g) * 1.2 - 0.1
    c = colors.clamp(0, 1)
    # a target that is a convex blend of the experts in each 4x4 tile is reproduced exactly
    w = torch.distributions.Dirichlet(torch.ones(3)).sample((3, 3))  # [3, 3 tiles, K]
    wmap = w.permute(2, 0, 1).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :9, :10]
    exact = torch.einsum("khw,khwc->hwc", wmap, c)
    assert torch.allclose(blend_oracle_image(colors, exact, 4), exact, atol=1e-5)
    # on any target: no blend on the 0.02 simplex grid does better on any tile, and the corners
    # (the choosing oracle) and the plain average are among the blends
    target = torch.rand(9, 10, 3, generator=g)
    step = 0.02
    grid = torch.tensor([(a * step, b * step, 1 - (a + b) * step) for a in range(51) for b in range(51 - a)])
    for b in (3, 4, 16):
        got = blend_oracle_image(colors, target, b)
        for i0 in range(0, 9, b):
            for j0 in range(0, 10, b):
                tile = (slice(i0, i0 + b), slice(j0, j0 + b))
                err = float(((got[tile] - target[tile]) ** 2).sum())
                blends = torch.einsum("mk,khwc->mhwc", grid, c[:, tile[0], tile[1]])
                assert err <= float(((blends - target[tile]) ** 2).sum((1, 2, 3)).min()) + 1e-6
        assert float(((got - target) ** 2).sum()) <= float(((oracle_image(colors, target, b) - target) ** 2).sum()) + 1e-6
    with pytest.raises(ValueError):
        blend_oracle_image(colors, target, 0)
    with pytest.raises(ValueError):
        blend_oracle_image(colors, target[:4], 4)


def test_oracle_headroom_on_complementary_experts(scene):
    # Expert 0 is wrong on the left half, expert 1 on the right: the oracle is far above both.
    mixture, *_ = make_mixture(scene, "uniform")
    res = oracle_headroom(mixture, scene, scene.test_views)
    colors = []
    for v in scene.test_views:
        out = mixture.render(v)
        colors.append((psnr(out.color, scene.image(v)), [psnr(c, scene.image(v)) for c in out.expert_colors]))
    assert res["mixture_psnr"] == pytest.approx(sum(c[0] for c in colors) / len(colors))
    assert res["expert_psnr"] == pytest.approx([sum(c[1][k] for c in colors) / len(colors) for k in range(2)])
    assert res["oracle_psnr"] > max(res["expert_psnr"]) + 5
    best = max(res["expert_psnr"])
    assert res["realised"] == pytest.approx((res["mixture_psnr"] - best) / (res["oracle_psnr"] - best))
    # coarser oracles lie between the best expert and the per-pixel oracle, the halves still told apart
    blocks = res["block_oracle_psnr"]
    assert set(blocks) == {4, 16}
    assert best - 1e-6 <= blocks[16] <= blocks[4] + 1e-6 <= res["oracle_psnr"] + 2e-6
    assert blocks[4] > best + 5
    blends = res["blend_oracle_psnr"]  # blending per tile does at least as well as choosing per tile
    assert set(blends) == {4, 16} and all(blends[b] >= blocks[b] - 1e-6 for b in blends)


def test_masked_distillation_loss_is_its_formula():
    g = torch.Generator().manual_seed(2)
    r, t, m = (torch.rand(H, W, 3, generator=g) for _ in range(3))
    gate = torch.rand(H, W, generator=g)
    lam = 0.3
    G = gate[..., None]
    expected = lam * (G * r - G * t).abs().mean() + (1 - lam) * ((1 - G) * r - (1 - G) * m).abs().mean()
    assert torch.allclose(masked_distill_loss(r, t, m, gate, lam, 0.0), expected)
    # With D-SSIM the two terms are the photometric loss of the masked images.
    from moegs.train.loss import photometric_loss

    assert torch.allclose(masked_distill_loss(r, t, m, torch.ones(H, W), 1.0, 0.2), photometric_loss(r, t, 0.2))
    assert torch.allclose(masked_distill_loss(r, t, m, torch.zeros(H, W), 0.0, 0.2), photometric_loss(r, m, 0.2))


def test_distillation_fine_tunes_the_trained_expert_with_the_masked_loss(scene):
    mixture, *_ = make_mixture(scene, "uniform")
    mixture.set_experts_trainable(False)  # as after stage 2: the student must unfreeze what it optimises
    k = 0
    teachers = teacher_targets(mixture, k, scene.train_views)
    with torch.no_grad():
        out = mixture.render(scene.train_views[2])
    assert torch.allclose(teachers[2][0], out.color.clamp(0, 1)) and torch.allclose(teachers[2][1], out.weights[..., k])
    cfg = finetune_config(TrainConfig(device="cpu"), mixture.experts[k], 30)
    assert cfg.strategy.refine_stop_iter == 0 and cfg.expert == mixture.experts[k].config
    trainer = DistillTrainer(mixture.experts[k], scene, cfg, teachers, lam=0.4)
    v = scene.train_views[2]
    render = mixture.experts[k].gaussians_at(v.time).render(v.camera, background=scene.background).color
    assert torch.allclose(trainer.image_loss(render, v, scene.image(v)),
                          masked_distill_loss(render, scene.image(v), teachers[2][0], teachers[2][1], 0.4, cfg.ssim_lambda))
    before = evaluate_expert(mixture.experts[k], scene, use_lpips=False)["psnr"]
    state = {n: p.detach().clone() for n, p in mixture.experts[k].state_dict().items()}
    student, res = distill(mixture, k, scene, 80, TrainConfig(device="cpu"), lam=1.0)
    # The student starts from the trained expert, which stays untouched, and fits the ground truth where G > 0.
    assert student is not mixture.experts[k] and student.splats["means"].shape == state["splats.means"].shape
    assert all(torch.equal(p, state[n]) for n, p in mixture.experts[k].state_dict().items())
    assert res["psnr"] > before + 2.0, (before, res["psnr"])  # measured +4.7 dB
    _, ref = finetune(mixture.experts[k], scene, 80, TrainConfig(device="cpu"))
    assert ref["psnr"] > before + 2.0  # measured +4.8 dB
