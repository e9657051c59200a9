"""Tests of the fused expert motion (``_motion_cpu``) against the experts' torch references
(``KeyframeGaussians.motion`` / ``SpacetimeGaussians.motion`` with ``backend="torch"``): forward values and
every gradient at keyframe times, inside segments and at the ends of the time span, on every keyframe level,
for mixed static/dynamic Gaussians, identical and antipodal keyframe rotations, vanished and saturated
temporal opacities, N = 0; float64 gradchecks; independence of the thread count; bad shapes."""

from __future__ import annotations

import pytest
import torch
from conftest import random_init

from moegs.experts import CanonicalConfig, _motion_cpu
from moegs.experts.keyframe import (KeyframeConfig, KeyframeGaussians, catmull_rom_tangent, hermite,
                                    hermite_coefficients)
from moegs.experts.spacetime import SpacetimeConfig, SpacetimeGaussians


@pytest.fixture(autouse=True)
def native():
    if not _motion_cpu._MOTION.available():
        pytest.skip(f"compiled CPU expert motion unavailable: {_motion_cpu._MOTION.error()}")


TIMES = torch.linspace(0, 1, 9)


def keyframe_model(n: int = 300, *, dtype=torch.float64, level: int = 2, seed: int = 1) -> KeyframeGaussians:
    """Half the Gaussians dynamic, random keyframes; a few keyframe rotations made identical to (and a few
    the negation of) their neighbour's, so slerp's small-angle branch and its shorter-arc flip both run."""
    cfg = KeyframeConfig(gaussians=CanonicalConfig(sh_degree=1), initial_keyframes=3, keyframe_levels=2,
                         subdivide_every=10, convert_every=0)
    model = KeyframeGaussians(random_init(n, seed=5, times=TIMES), cfg).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s = model.splats
        s["dynamic"].copy_((torch.rand(n, generator=g) < 0.5).to(dtype))
        s["velocity"].copy_(torch.randn(n, 3, generator=g, dtype=dtype))
        s["quats"].copy_(torch.randn(n, 4, generator=g, dtype=dtype))  # unnormalised: the op normalises
        s["kf_means"].add_(0.3 * torch.randn(s["kf_means"].shape, generator=g, dtype=dtype))
        s["kf_quats"].copy_(2 * torch.randn(s["kf_quats"].shape, generator=g, dtype=dtype))
        s["kf_quats"][: n // 10, 1:] = s["kf_quats"][: n // 10, :1]  # equal neighbours: sin(theta) = 0
        s["kf_quats"][n // 10: n // 5, 1:] = -s["kf_quats"][n // 10: n // 5, :1]  # antipodal: flipped, then equal
        model.level.fill_(level)
    return model


def spacetime_model(n: int = 300, *, dtype=torch.float64, seed: int = 1) -> SpacetimeGaussians:
    """Random motion, rotations and temporal parameters; some Gaussians far from their centre (vanished)
    and some opaque at their centre (log-opacity clamped)."""
    model = SpacetimeGaussians(random_init(n, seed=5, times=TIMES), SpacetimeConfig(init_time_copies=2)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s = model.splats
        n = s["means"].shape[0]
        s["motion"].copy_(torch.randn(n, 9, generator=g, dtype=dtype))
        s["omega"].copy_(torch.randn(n, 4, generator=g, dtype=dtype))
        s["opacities"].copy_(4 * torch.randn(n, generator=g, dtype=dtype))
        s["opacities"][: n // 10] = 30.0  # saturated
        s["t_center"].copy_(torch.rand(n, generator=g, dtype=dtype))
        s["t_center"][: n // 20] = 0.5  # exactly at t = 0.5: tau = 0, log-opacity over its clamp
        s["t_scale"].copy_(torch.randn(n, generator=g, dtype=dtype) - 1.5)
        s["t_scale"][-n // 10:] = -6.0  # vanished away from their centre
    return model


def run(model, t: float, backend: str, seed: int = 2, sparse: bool = False):
    """Outputs, and the gradients of a random linear loss w.r.t. every parameter (zeros where none).
    ``sparse``: the loss reaches a third of the Gaussians through every output, a third through one
    output only and the rest not at all (as the compositing leaves hidden or transparent ones)."""
    model.zero_grad(set_to_none=True)
    out = model.motion(t, backend=backend)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in out]
    if sparse:
        kind = torch.arange(out[0].shape[0]) % 3
        for j, w in enumerate(weights):
            w[kind == 2] = 0
            w[(kind == 1) & (torch.arange(len(w)) % len(weights) != j)] = 0
    sum((o * w).sum() for o, w in zip(out, weights)).backward()
    grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.splats.items()
             if p.requires_grad}
    return [o.detach() for o in out], grads


def amax(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def assert_close(native, reference, rel: float) -> None:
    (out_n, g_n), (out_r, g_r) = native, reference
    for a, b in zip(out_n, out_r, strict=True):
        assert a.shape == b.shape
        assert amax(a - b) <= rel * max(1.0, amax(b))
    assert g_n.keys() == g_r.keys()
    for k in g_r:
        scale = max(amax(g_r[k]), 1e-30)
        assert amax(g_n[k] - g_r[k]) / scale <= rel, k


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("t", [0.0, 0.125, 0.3, 0.5, 0.77, 1.0, -0.2, 1.3])
def test_keyframe_motion_equals_the_reference(level, t):
    model = keyframe_model(level=level)
    assert_close(run(model, t, "cpu"), run(model, t, "torch"), 1e-10)


def test_keyframe_motion_float32_and_inactive_keyframes():
    model = keyframe_model(dtype=torch.float32, level=1)
    native, ref = run(model, 0.3, "cpu"), run(model, 0.3, "torch")
    assert_close(native, ref, 1e-5)
    # Only the active keyframes the segment reads learn (level 1: every 2nd; t = 0.3 reads 0, 2, 4, 6).
    read = native[1]["kf_means"].abs().sum((0, 2)) > 0
    assert read.tolist() == [k in (0, 2, 4, 6) for k in range(model.num_keyframes)]
    assert (native[1]["kf_quats"].abs().sum((0, 2)) > 0).tolist() == [k in (2, 4) for k in range(model.num_keyframes)]


@pytest.mark.parametrize("make", [keyframe_model, spacetime_model])
def test_motion_backward_where_the_upstream_reaches_only_some_gaussians(make):
    model = make()
    native, ref = run(model, 0.3, "cpu", sparse=True), run(model, 0.3, "torch", sparse=True)
    assert_close(native, ref, 1e-10)
    untouched = torch.arange(model.splats["means"].shape[0]) % 3 == 2
    for k, grad in native[1].items():
        assert (grad[untouched] == 0).all(), k
    assert (native[1]["means"][~untouched] != 0).any()


def test_hermite_coefficients_reproduce_the_spline():
    g = torch.Generator().manual_seed(0)
    for window in (2, 3, 4):
        P = torch.randn(5, window, 3, generator=g, dtype=torch.float64)
        for k in range(window - 1):
            for s in (0.0, 0.3, 1.0):
                want = hermite(P[:, k], catmull_rom_tangent(P, k), P[:, k + 1], catmull_rom_tangent(P, k + 1), s)
                c = torch.tensor(hermite_coefficients(window, k, s), dtype=torch.float64)
                assert torch.allclose((P * c[None, :, None]).sum(1), want, atol=1e-12)


def test_keyframe_motion_gradcheck():
    model = keyframe_model(n=12, level=2)
    s = model.splats
    cols, k, u = model.segment(0.4)
    coefs = hermite_coefficients(len(cols), k, u)
    inputs = [s[name].detach().clone().requires_grad_() for name in ("means", "velocity", "quats", "kf_means", "kf_quats")]

    def f(*xs):
        return _motion_cpu.keyframe_motion_cpu(*xs, s["dynamic"].detach(), 0.4, cols, coefs, (cols[k], cols[k + 1]), u)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("t", [0.0, 0.31, 0.5, 1.0])
def test_spacetime_motion_equals_the_reference(t):
    model = spacetime_model()
    assert_close(run(model, t, "cpu"), run(model, t, "torch"), 1e-10)


def test_spacetime_motion_float32():
    model = spacetime_model(dtype=torch.float32)
    (out_n, g_n), (out_r, g_r) = run(model, 0.31, "cpu"), run(model, 0.31, "torch")
    # Means and rotations agree to rounding; the opacity logit of a nearly opaque Gaussian is ill-conditioned
    # (log p - log1p(-p) near p = 1) in float32 on either path, so compare it relative to its size.
    for a, b in zip(out_n[:2], out_r[:2]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out_n[2], out_r[2], rtol=1e-3, atol=1e-4)
    for k in g_r:
        assert torch.allclose(g_n[k], g_r[k], rtol=1e-3, atol=1e-4 * float(g_r[k].abs().max())), k


def test_spacetime_motion_gradcheck_and_clamp():
    model = spacetime_model(n=16)
    s = model.splats
    names = ("means", "motion", "quats", "omega", "opacities", "t_center", "t_scale")
    inputs = [s[name].detach().clone().requires_grad_() for name in names]
    # The polynomial and the rotation hold tau constant (the temporal centre learns through the opacity
    # only), so the centre is checked against the opacity alone.
    center = inputs[5].detach()
    assert torch.autograd.gradcheck(
        lambda m, c, q, w, o, ts: _motion_cpu.spacetime_motion_cpu(m, c, q, w, o, center, ts, 0.37),
        inputs[:5] + inputs[6:], eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda tc: _motion_cpu.spacetime_motion_cpu(*(x.detach() for x in inputs[:5]), tc, inputs[6].detach(),
                                                    0.37)[2], inputs[5:6], eps=1e-6, atol=1e-7)
    # At tau = 0 a saturated Gaussian's log-opacity is clamped: no gradient reaches its opacity.
    x = [v.detach().clone().requires_grad_() for v in inputs]
    with torch.no_grad():
        x[4][0], x[5][0] = 30.0, 0.5
    _, _, o = _motion_cpu.spacetime_motion_cpu(*x, 0.5)
    o.sum().backward()
    assert x[4].grad[0] == 0 and torch.isfinite(o).all()


def test_motion_is_independent_of_the_thread_count_and_handles_no_gaussians():
    threads = torch.get_num_threads()
    for model in (keyframe_model(n=2000, dtype=torch.float32), spacetime_model(n=2000, dtype=torch.float32)):
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            try:
                results.append(run(model, 0.43, "cpu"))
            finally:
                torch.set_num_threads(threads)
        for out, grads in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(out, results[0][0]))
            assert all(torch.equal(grads[k], results[0][1][k]) for k in grads)
    # Every Gaussian pruned away: empty outputs and gradients.
    for model, shapes in ((keyframe_model(n=10), [(0, 3), (0, 4)]), (spacetime_model(n=10), [(0, 3), (0, 4), (0,)])):
        with torch.no_grad():
            for name in list(model.splats.keys()):
                model.splats[name] = torch.nn.Parameter(model.splats[name][:0].clone(),
                                                        requires_grad=model.splats[name].requires_grad)
        out, grads = run(model, 0.5, "cpu")
        assert [tuple(o.shape) for o in out] == shapes and all(g.numel() == 0 for g in grads.values())


def test_bad_inputs_are_refused():
    model = keyframe_model(n=10)
    s = {k: v.detach() for k, v in model.splats.items()}
    with pytest.raises(RuntimeError, match="velocity has shape"):
        _motion_cpu.keyframe_motion_cpu(s["means"], s["velocity"][:5], s["quats"], s["kf_means"], s["kf_quats"],
                                        s["dynamic"], 0.5, [0, 4], [0.5, 0.5], (0, 4), 0.5)
    with pytest.raises(RuntimeError, match="out of range"):
        _motion_cpu.keyframe_motion_cpu(s["means"], s["velocity"], s["quats"], s["kf_means"], s["kf_quats"],
                                        s["dynamic"], 0.5, [0, 40], [0.5, 0.5], (0, 4), 0.5)
    with pytest.raises(ValueError, match="unknown motion backend"):
        model.motion(0.5, backend="cuda")
