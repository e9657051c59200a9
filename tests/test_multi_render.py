"""Single-pass multi-expert rendering (``rasterize_experts``) against K separate ``rasterize``
calls, forward and every gradient, for the torch reference and the compiled cpu backend; float64
gradcheck; the compositing weights as a sparse matrix (``splat_weights``) against compositing; the edge cases (an expert without Gaussians, K = 1 and 5, no extras and 8, Gaussians
behind the camera, a 1x1 image); bad arguments."""

from __future__ import annotations

import pytest
import torch

from moegs.render import _cpu, composite_experts, prepare_experts, rasterize, rasterize_experts, splat_weights
from test_render import make_camera, random_scene

NAMES = ("means", "quats", "log_scales", "opacity_logits", "colors", "extras")


@pytest.fixture(params=("torch", "cpu"))
def backend(request):
    if request.param == "cpu" and not _cpu.available():
        pytest.skip(f"compiled CPU rasterizer unavailable: {_cpu.build_error()}")
    return request.param


def expert_scene(sizes, camera, *, n_extras=1, sh_degree=None, dtype=torch.float32, seed=0, behind=0):
    """Overlapping experts: one random scene split into experts of ``sizes`` Gaussians, interleaved
    (so that depth order mixes experts); ``behind`` Gaussians get a negative depth."""
    n = sum(sizes)
    params = random_scene(max(n, 1), camera, sh_degree=sh_degree, n_extras=n_extras, dtype=dtype, seed=seed)
    params = [p[:n] for p in params]
    if behind:
        params[0][:behind, 2] *= -1.0
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
    ids = ids[torch.randperm(n, generator=g)]
    return params, ids


def leaves(params):
    return [p.detach().clone().requires_grad_() for p in params]


def loss_of(color, alpha, depth, extras, seed=1):
    """A fixed random linear functional of every output ([K, ...] stacked)."""
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (color, alpha, depth, extras))


def single_pass(params, ids, K, camera, backend, **kw):
    ps = leaves(params)
    out = rasterize_experts(*ps[:5], ids, K, camera, extras=ps[5], backend=backend, **kw)
    loss_of(out.color, out.alpha, out.depth, out.extras).backward()
    return out, ps


def k_passes(params, ids, K, camera, backend, **kw):
    ps = leaves(params)
    outs = [rasterize(*(p[ids == k] for p in ps[:5]), camera, extras=ps[5][ids == k], backend=backend, **kw)
            for k in range(K)]
    stacked = [torch.stack([getattr(o, f) for o in outs]) for f in ("color", "alpha", "depth", "extras")]
    loss_of(*stacked).backward()
    return stacked, ps


def assert_equal_to_k_passes(params, ids, K, camera, backend, atol=1e-5, rtol=1e-4, **kw):
    out, ps1 = single_pass(params, ids, K, camera, backend, **kw)
    ref, ps2 = k_passes(params, ids, K, camera, backend, **kw)
    for name, a, b in zip(("color", "alpha", "depth", "extras"), (out.color, out.alpha, out.depth, out.extras), ref):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert a.numel() == 0 or (a - b).abs().max() <= atol, (name, (a - b).abs().max().item())
    for name, p1, p2 in zip(NAMES, ps1, ps2):
        if p2.grad is None:  # nothing visible at all: both graphs give zero
            assert p1.grad is None or not p1.grad.any(), name
            continue
        scale = p2.grad.norm().clamp_min(1e-12)
        err = ((p1.grad - p2.grad).norm() / scale).item()
        assert err <= rtol, (name, err)
    return out


@pytest.mark.parametrize(
    "sizes,n_extras,size,sh",
    [
        ((120, 90, 150), 1, (40, 30), None),  # K = 3, RGB
        ((0, 80, 60), 8, (33, 21), 2),  # an expert without Gaussians, C = 8, SH
        ((200,), 0, (24, 24), None),  # K = 1, no extras
        ((40, 50, 30, 60, 20), 2, (48, 20), 1),  # K = 5
        ((30, 20), 1, (1, 1), None),  # a 1x1 image
    ],
)
def test_single_pass_equals_k_passes(backend, sizes, n_extras, size, sh):
    cam = make_camera(*size)
    params, ids = expert_scene(sizes, cam, n_extras=n_extras, sh_degree=sh)
    out = assert_equal_to_k_passes(params, ids, len(sizes), cam, backend)
    K = len(sizes)
    W, H = size
    assert out.color.shape == (K, H, W, 3) and out.alpha.shape == (K, H, W) and out.extras.shape == (K, H, W, n_extras)
    if sizes[0] == 0:
        assert out.alpha[0].abs().max() == 0


def test_dense_experts_reach_the_cutoff_independently(backend):
    """Opaque overlapping experts: every pixel's transmittance hits 1e-4 in some expert long before
    the others; each still composites exactly as if alone."""
    cam = make_camera(32, 32)
    params, ids = expert_scene((300, 300, 40), cam, seed=3)
    params[3] = params[3].abs() + 4.0  # opacities ~0.98-0.99
    out = assert_equal_to_k_passes(params, ids, 3, cam, backend)
    assert out.alpha[:2].min() > 0.99  # the two dense experts saturate, so the cut-off mattered


def test_gaussians_behind_the_camera(backend):
    cam = make_camera(30, 20)
    params, ids = expert_scene((60, 60), cam, behind=50, seed=5)
    assert_equal_to_k_passes(params, ids, 2, cam, backend)


def test_cpu_matches_the_torch_reference(backend):
    if backend != "cpu":
        pytest.skip("compares cpu against torch")
    cam = make_camera(40, 28)
    params, ids = expert_scene((90, 0, 110, 70), cam, n_extras=3, sh_degree=1, seed=7)
    o1, p1 = single_pass(params, ids, 4, cam, "cpu")
    o2, p2 = single_pass(params, ids, 4, cam, "torch")
    for f in ("color", "alpha", "extras"):
        assert (getattr(o1, f) - getattr(o2, f)).abs().max() < 1e-4, f
    for name, a, b in zip(NAMES, p1, p2):
        assert (a.grad - b.grad).norm() / b.grad.norm().clamp_min(1e-8) < 1e-3, name


def test_gradcheck_float64(backend):
    cam = make_camera(10, 8, dtype=torch.float64)
    params, ids = expert_scene((4, 3, 3), cam, n_extras=2, sh_degree=1, dtype=torch.float64, seed=11)
    params[2] = params[2] + 0.8  # larger footprints: every Gaussian covers several pixels

    def f(*ps):
        out = rasterize_experts(*ps[:5], ids, 3, cam, extras=ps[5], backend=backend)
        return out.color, out.alpha, out.extras

    assert torch.autograd.gradcheck(f, leaves(params), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_float64_cpu_equals_k_passes_tightly(backend):
    cam = make_camera(36, 24, dtype=torch.float64)
    params, ids = expert_scene((80, 100, 60), cam, n_extras=2, dtype=torch.float64, seed=13)
    assert_equal_to_k_passes(params, ids, 3, cam, backend, atol=1e-12, rtol=1e-10)


def test_concat_sets_renders_every_set_as_itself(backend):
    """Sets of SH degree 3 and 1 in (sh0, shN) parts, degree 2 as one tensor and RGB, concatenated for one
    pass (parts kept, lower degrees padded with zero bands), each equal to its own render."""
    from moegs.gaussians import GaussianSet, concat_sets

    cam = make_camera(40, 30)
    sets = []
    for k, degree in enumerate((3, 1, 2, None)):
        means, quats, log_scales, opac, colors, _ = random_scene(25 + 5 * k, cam, sh_degree=degree, seed=20 + k)
        if degree in (3, 1):  # as experts store them; degree 1 keeps all 16 bands, evaluating 4
            colors = random_scene(25 + 5 * k, cam, sh_degree=3, seed=20 + k)[4] if degree == 1 else colors
            colors = (colors[:, :1].contiguous(), colors[:, 1:].contiguous())
        sets.append(GaussianSet(means, quats, log_scales, opac, colors, degree or 0))
    gs = concat_sets(sets)
    assert isinstance(gs.colors, tuple) and gs.colors[1].shape == (sum(len(s) for s in sets), 15, 3)
    ids = torch.repeat_interleave(torch.arange(4), torch.tensor([len(s) for s in sets]))
    out = rasterize_experts(gs.means, gs.quats, gs.log_scales, gs.opacity_logits, gs.colors, ids, 4, cam,
                            sh_degree=gs.sh_degree, backend=backend)
    for k, s in enumerate(sets):
        ref = s.render(cam, backend=backend)
        assert torch.allclose(out.color[k], ref.color, atol=2e-6) and torch.allclose(out.alpha[k], ref.alpha, atol=2e-6)
    rgb_only = concat_sets([sets[3], sets[3]])
    assert torch.is_tensor(rgb_only.colors) and rgb_only.colors.shape == (2 * len(sets[3]), 1, 3)


def test_bad_expert_ids(backend):
    cam = make_camera(8, 8)
    params, ids = expert_scene((5, 5), cam)
    with pytest.raises(ValueError, match="expert_ids"):
        rasterize_experts(*params[:5], ids + 1, 2, cam, backend=backend)
    with pytest.raises(ValueError, match="expert_ids"):
        rasterize_experts(*params[:5], ids[:-1], 2, cam, backend=backend)
    with pytest.raises(ValueError, match="num_experts"):
        rasterize_experts(*params[:5], ids, 0, cam, backend=backend)


@pytest.mark.parametrize(
    "sizes,n_extras,size,dtype,behind",
    [
        ((120, 90, 150), 3, (40, 30), torch.float32, 0),
        ((0, 80, 60), 8, (33, 21), torch.float32, 20),  # an empty expert, Gaussians behind the camera
        ((200,), 1, (24, 24), torch.float64, 0),  # K = 1, float64
        ((40, 50, 30, 60, 20), 2, (48, 20), torch.float32, 0),  # K = 5
        ((30, 20), 2, (1, 1), torch.float32, 0),  # a 1x1 image
    ],
)
def test_splat_weights_equal_compositing(sizes, n_extras, size, dtype, behind):
    """``W @ v`` is what compositing ``v`` as extra channels gives, and so are its gradients; ``W @ 1``
    is each expert's alpha; ``composite_experts(weights=W)`` equals the kernel's compositing."""
    if not _cpu.available():
        pytest.skip(f"compiled CPU rasterizer unavailable: {_cpu.build_error()}")
    cam = make_camera(*size, dtype=dtype)
    params, ids = expert_scene(sizes, cam, n_extras=n_extras, dtype=dtype, seed=13, behind=behind)
    K = len(sizes)
    prep = prepare_experts(*params[:5], ids, K, cam, backend="cpu")
    weights = splat_weights(prep)
    v1, v2 = (params[5].detach().clone().requires_grad_() for _ in range(2))
    ref = composite_experts(prep, extras=v1)
    maps = weights.splat(v2)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert maps.shape == ref.extras.shape == (K, size[1], size[0], n_extras)
    assert (maps - ref.extras).abs().max() <= tol
    ones = weights.splat(torch.ones(len(ids), 1, dtype=dtype))[..., 0]
    assert (ones - ref.alpha).abs().max() <= tol
    g = torch.randn(maps.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (ref.extras * g).sum().backward()
    (maps * g).sum().backward()
    assert (v2.grad - v1.grad).norm() <= 1e-5 * v1.grad.norm().clamp_min(1e-12)
    if sizes[0] == 0:
        assert maps[0].abs().max() == 0
    # Compositing by the weights gives every output of the kernel (colours over the background too).
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    kernel = composite_experts(prep, extras=v1.detach(), background=bg)
    by_weights = composite_experts(prep, extras=v1.detach(), background=bg, weights=weights)
    for name in ("color", "alpha", "depth", "extras"):
        assert (getattr(by_weights, name) - getattr(kernel, name)).abs().max() <= 10 * tol, name


def test_splat_weights_only_where_the_backend_has_them():
    cam = make_camera(20, 16)
    params, ids = expert_scene((30, 30), cam)
    assert splat_weights(prepare_experts(*params[:5], ids, 2, cam, backend="torch")) is None


def test_splat_weights_do_not_depend_on_the_thread_count():
    """The sparse layout (rows front to back, each column in row order) is the same on 1 and 3 threads."""
    if not _cpu.available():
        pytest.skip(f"compiled CPU rasterizer unavailable: {_cpu.build_error()}")
    cam = make_camera(40, 30)
    params, ids = expert_scene((120, 90, 150), cam, seed=5)
    prep = prepare_experts(*params[:5], ids, 3, cam, backend="cpu")
    threads = torch.get_num_threads()
    try:
        layouts = []
        for n in (1, 3):
            torch.set_num_threads(n)
            w = splat_weights(prep)
            layouts.append([t for m in (w.matrix, w.transpose) for t in (m.crow_indices(), m.col_indices(), m.values())])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*layouts))
