"""Tests of the rasterizer: the torch reference against closed-form compositing and finite
differences, the compiled ``cpu`` backend against the reference (forward and every gradient),
and edge cases for both."""

from __future__ import annotations

import math

import pytest
import torch

from moegs.cameras import Camera
from moegs.render import num_sh_bases, rasterize
from moegs.render import _cpu
from moegs.render.projection import BLUR

BACKENDS = ("torch", "cpu")
NAMES = ("means", "quats", "log_scales", "opacity_logits", "colors", "extras")


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cpu" and not _cpu.available():
        pytest.skip(f"compiled CPU rasterizer unavailable: {_cpu.build_error()}")
    return request.param


@pytest.fixture
def cpu_backend():
    if not _cpu.available():
        pytest.skip(f"compiled CPU rasterizer unavailable: {_cpu.build_error()}")


def make_camera(width, height, *, fx=None, fy=None, cx=None, cy=None, dtype=torch.float32) -> Camera:
    """Camera at the world origin looking along +z (identity world-to-camera)."""
    fx = float(fx if fx is not None else width)
    return Camera(
        torch.eye(4, dtype=dtype), fx=fx, fy=float(fy if fy is not None else fx),
        cx=float(cx if cx is not None else width / 2), cy=float(cy if cy is not None else height / 2),
        width=width, height=height,
    )


def random_scene(n, camera, *, pixel_sigma=2.5, sh_degree=None, n_extras=1, dtype=torch.float32, seed=0):
    """Gaussians in the camera's frustum at depth 2..6 whose footprints are ~``pixel_sigma`` px.

    Opacity logits up to ~6 so that some alphas hit the 0.99 clamp and dense regions reach the
    1e-4 transmittance cut-off.
    """
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 4.0 * torch.rand(n, generator=g, dtype=dtype)
    u = (torch.rand(n, generator=g, dtype=dtype) * 1.2 - 0.1) * camera.width
    v = (torch.rand(n, generator=g, dtype=dtype) * 1.2 - 0.1) * camera.height
    means = torch.stack(((u - camera.cx) / camera.fx * z, (v - camera.cy) / camera.fy * z, z), -1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    base = math.log(pixel_sigma / camera.fx) + torch.log(z)[:, None]
    log_scales = base + 0.4 * torch.randn(n, 3, generator=g, dtype=dtype)
    logits = torch.randn(n, generator=g, dtype=dtype) * 2.0 + 1.5
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = 0.3 * torch.randn(n, num_sh_bases(sh_degree), 3, generator=g, dtype=dtype)
    extras = torch.randn(n, n_extras, generator=g, dtype=dtype)
    return [means, quats, log_scales, logits, colors, extras]


def render(params, camera, backend, **kw):
    params = [p.detach().clone().requires_grad_() for p in params]
    out = rasterize(*params[:5], camera, extras=params[5], backend=backend, **kw)
    return out, params


def run_backward(out, seed=1):
    """Backpropagates a fixed random linear functional of every output."""
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for t in (out.color, out.alpha, out.depth, out.extras):
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    loss.backward()


def both_backends(params, camera, **kw):
    res = {}
    for b in BACKENDS:
        out, ps = render(params, camera, b, **kw)
        run_backward(out)
        res[b] = (out, ps)
    return res


def assert_grads_close(res, rtol=1e-3):
    (out_t, ps_t), (out_c, ps_c) = res["torch"], res["cpu"]
    for name, pt, pc in zip(NAMES, ps_t, ps_c):
        assert pt.grad is not None and pc.grad is not None, name
        assert torch.isfinite(pc.grad).all(), name
        scale = pt.grad.norm().clamp_min(1e-8)
        assert (pt.grad - pc.grad).norm() / scale < rtol, (name, ((pt.grad - pc.grad).norm() / scale).item())
    gt, gc = out_t.meta["means2d"].grad, out_c.meta["means2d"].grad
    assert gt is not None and gc is not None
    assert (gt - gc).norm() / gt.norm().clamp_min(1e-8) < rtol


def assert_outputs_close(res, atol=1e-4):
    out_t, out_c = res["torch"][0], res["cpu"][0]
    for k in ("color", "alpha", "extras"):
        a, b = getattr(out_t, k), getattr(out_c, k)
        assert a.shape == b.shape, k
        assert a.numel() == 0 or (a - b).abs().max() < atol, (k, (a - b).abs().max().item())
    # Depth divides by alpha: compare where there is some coverage.
    m = out_t.alpha > 1e-2
    assert (out_t.depth - out_c.depth)[m].abs().max() < 1e-3


# ----------------------------------------------------------------- the oracle against maths


def test_cpu_extension_builds():
    assert _cpu.available(), _cpu.build_error()
    assert _cpu.build_error() is None


def test_a_killed_build_does_not_block_the_next_load(cpu_backend):
    """A build killed mid-way leaves torch's ``lock`` file: a new process must not wait on it forever."""
    import subprocess
    import sys

    _, build_dir = _cpu.NATIVE._build_dir()
    (build_dir / "lock").touch()
    code = "from moegs.render import _cpu; assert _cpu.available(), _cpu.build_error()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not (build_dir / "lock").exists()


def single_gaussian(camera, z, logit, sigma_world, color, dtype=torch.float64):
    """One isotropic Gaussian on the optical axis (projects exactly to ``(cx, cy)``)."""
    return [
        torch.tensor([[0.0, 0.0, z]], dtype=dtype),
        torch.tensor([[0.3, -0.2, 0.5, 0.7]], dtype=dtype),  # any rotation: isotropic
        torch.full((1, 3), math.log(sigma_world), dtype=dtype),
        torch.tensor([logit], dtype=dtype),
        torch.tensor([color], dtype=dtype),
        torch.zeros(1, 0, dtype=dtype),
    ]


def test_single_gaussian_matches_closed_form(backend):
    # 16x12 image = one tile, so every pixel is evaluated; fx != fy makes the footprint anisotropic.
    cam = make_camera(16, 12, fx=30.0, fy=20.0, cx=7.5, cy=5.5, dtype=torch.float64)
    z, s, logit = 4.0, 0.25, 0.4
    params = single_gaussian(cam, z, logit, s, [0.2, 0.6, 0.9])
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out, _ = render(params, cam, backend, background=bg)

    var_x = (cam.fx * s / z) ** 2 + BLUR  # J Sigma J^T + blur, J = diag(fx/z, fy/z) on the axis
    var_y = (cam.fy * s / z) ** 2 + BLUR
    v, u = torch.meshgrid(torch.arange(12, dtype=torch.float64) + 0.5, torch.arange(16, dtype=torch.float64) + 0.5,
                          indexing="ij")
    alpha = torch.sigmoid(torch.tensor(logit, dtype=torch.float64)) * torch.exp(
        -0.5 * ((u - cam.cx) ** 2 / var_x + (v - cam.cy) ** 2 / var_y))
    alpha = torch.where(alpha >= 1 / 255, alpha.clamp_max(0.99), torch.zeros_like(alpha))
    assert (alpha == 0).any() and (alpha > 0.5).any()  # the cut-off and the centre are both in view
    torch.testing.assert_close(out.alpha, alpha, rtol=1e-9, atol=1e-12)
    expected = alpha[..., None] * params[4][0] + (1 - alpha[..., None]) * bg
    torch.testing.assert_close(out.color, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.depth, torch.where(alpha > 0, z, 0.0).to(torch.float64), rtol=1e-9, atol=1e-12)
    # The pixel whose centre is the projected mean gets exactly sigmoid(logit).
    assert out.alpha[5, 7].item() == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12)


def test_front_to_back_order_and_transmittance_cutoff(backend):
    """Five identical-footprint Gaussians on the axis, alpha 0.95 at the centre pixel:
    T after k of them is 0.05^k, so the 4th would bring T below 1e-4 and stops the pixel."""
    cam = make_camera(16, 16, fx=40.0, cx=8.5, cy=8.5, dtype=torch.float64)
    zs = torch.tensor([5.0, 3.0, 7.0, 4.0, 6.0], dtype=torch.float64)  # unsorted on purpose
    colors = torch.rand(5, 3, dtype=torch.float64)
    logit = math.log(0.95 / 0.05)
    params = [
        torch.stack((torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), zs), -1),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64).repeat(5, 1),
        torch.log(0.1 * zs)[:, None].repeat(1, 3),  # same pixel footprint at every depth
        torch.full((5,), logit, dtype=torch.float64),
        colors,
        torch.zeros(5, 0, dtype=torch.float64),
    ]
    out, _ = render(params, cam, backend)
    order = torch.argsort(zs)
    a = 0.95
    expected = sum(a * (1 - a) ** k * colors[order[k]] for k in range(3))
    torch.testing.assert_close(out.color[8, 8], expected, rtol=1e-9, atol=1e-12)
    assert out.alpha[8, 8].item() == pytest.approx(1 - (1 - a) ** 3, rel=1e-12)


# ----------------------------------------------------------------- gradients against finite differences


def gradcheck_scene(sh_degree, dtype=torch.float64):
    """A tiny scene where no threshold switches under perturbation: big Gaussians (every pixel of
    the 20x12 image well above alpha 1/255), opacities 0.3..0.7 (no 0.99 clamp, T >> 1e-4), all
    near the axis (no Jacobian clamping), two tiles."""
    cam = make_camera(20, 12, fx=20.0, fy=22.0, cx=9.7, cy=6.2, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    n = 4
    z = torch.tensor([2.0, 2.6, 3.1, 3.7], dtype=dtype)
    xy = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 0.4
    means = torch.cat((xy * z[:, None], z[:, None]), -1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    log_scales = torch.log(z)[:, None] + math.log(0.6) + 0.2 * torch.randn(n, 3, generator=g, dtype=dtype)
    logits = torch.logit(0.3 + 0.4 * torch.rand(n, generator=g, dtype=dtype))
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = 0.2 * torch.randn(n, num_sh_bases(sh_degree), 3, generator=g, dtype=dtype)
        colors[:, 0] += 1.0  # keep colour > 0 (away from the clamp at 0)
    extras = torch.randn(n, 2, generator=g, dtype=dtype)
    return [means, quats, log_scales, logits, colors, extras], cam


@pytest.mark.parametrize("sh_degree", [None, 3], ids=["rgb", "sh3"])
def test_gradcheck(backend, sh_degree):
    params, cam = gradcheck_scene(sh_degree)
    bg = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(4, cam.height, cam.width, 3 + 1 + 1 + 2, generator=g, dtype=torch.float64)

    def f(*ps):
        out = rasterize(*ps[:5], cam, extras=ps[5], background=bg, backend=backend)
        assert (out.alpha > 0.05).all()  # the scene keeps every pixel covered (see gradcheck_scene)
        img = torch.cat((out.color, out.alpha[..., None], out.depth[..., None], out.extras), -1)
        return (weights * img).sum((1, 2, 3))  # 4 random projections of every output

    inputs = tuple(p.clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------- cpu against the torch reference


@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_forward_and_gradients_match_torch(cpu_backend, seed):
    cam = make_camera(45, 34, fx=50.0, cx=21.0, cy=18.0)
    params = random_scene(300, cam, seed=seed)
    res = both_backends(params, cam)
    assert (res["torch"][0].alpha > 0.999).any()  # dense: some pixels reach the transmittance cut-off
    assert (torch.sigmoid(params[3]) > 0.99).any()  # and some alphas hit the clamp
    assert_outputs_close(res)
    assert_grads_close(res)


def test_cpu_gradients_match_torch_sh3(cpu_backend):
    cam = make_camera(40, 30, fx=45.0)
    params = random_scene(200, cam, sh_degree=3, n_extras=2, seed=4)
    res = both_backends(params, cam, sh_degree=3)
    assert_outputs_close(res)
    assert_grads_close(res)


def test_cpu_float64_matches_torch_tightly(cpu_backend):
    cam = make_camera(33, 17, fx=40.0, dtype=torch.float64)
    params = random_scene(150, cam, dtype=torch.float64, seed=7)
    res = both_backends(params, cam)
    assert_outputs_close(res, atol=1e-10)
    assert_grads_close(res, rtol=1e-8)


@pytest.mark.parametrize(
    "width,height,n_extras,principal,background",
    [
        (37, 23, 0, (0.5, 0.5), None),  # non-square, not a multiple of 16, no extras
        (32, 48, 8, (0.2, 0.75), (0.2, 0.5, 0.9)),  # portrait, 8 extras, off-centre principal point, background
        (1, 1, 1, (0.5, 0.5), (1.0, 1.0, 1.0)),  # a single pixel
    ],
    ids=["37x23-C0", "32x48-C8-offcentre-bg", "1x1"],
)
def test_image_shapes_channels_and_background(cpu_backend, width, height, n_extras, principal, background):
    cam = make_camera(width, height, fx=max(width, 8) * 1.2, cx=principal[0] * width, cy=principal[1] * height)
    n = 60 if width > 1 else 5
    params = random_scene(n, cam, n_extras=n_extras, pixel_sigma=2.0 if width > 1 else 0.6, seed=width)
    bg = None if background is None else torch.tensor(background)
    res = both_backends(params, cam, background=bg)
    for out, _ in res.values():
        assert out.color.shape == (height, width, 3) and out.alpha.shape == (height, width)
        assert out.depth.shape == (height, width) and out.extras.shape == (height, width, n_extras)
        assert (out.alpha > 0).any()
        empty = out.alpha == 0
        want = torch.zeros(3) if bg is None else bg
        assert torch.equal(out.color[empty], want.expand(int(empty.sum()), 3))
    assert_outputs_close(res)
    assert_grads_close(res)


# ----------------------------------------------------------------- edge cases, both backends


def test_culled_gaussians_contribute_nothing(backend):
    cam = make_camera(40, 30, fx=45.0)
    params = random_scene(80, cam, seed=2)
    # Behind the camera, at the camera plane, far off-screen (left, below), beyond the far plane.
    bad_means = torch.tensor([[0.0, 0.0, -3.0], [0.5, 0.2, 0.0], [-60.0, 0.0, 3.0], [0.0, 90.0, 4.0],
                              [0.0, 0.0, 2.0e4]])
    k = len(bad_means)
    extra = [bad_means, torch.randn(k, 4), torch.full((k, 3), -2.0), torch.full((k,), 3.0), torch.rand(k, 3),
             torch.randn(k, 1)]
    both = [torch.cat((p, e)) for p, e in zip(params, extra)]
    out_a, ps_a = render(params, cam, backend)
    out_b, ps_b = render(both, cam, backend)
    run_backward(out_a)
    run_backward(out_b)
    for key in ("color", "alpha", "depth", "extras"):
        torch.testing.assert_close(getattr(out_b, key), getattr(out_a, key), rtol=0, atol=1e-6)
    assert (out_b.meta["radii"][-k:] == 0).all()
    for name, pa, pb in zip(NAMES, ps_a, ps_b):
        assert torch.isfinite(pb.grad).all(), name
        assert (pb.grad[-k:] == 0).all(), name
        torch.testing.assert_close(pb.grad[:-k], pa.grad, rtol=1e-5, atol=1e-6)


def test_degenerate_scales(backend):
    cam = make_camera(40, 30, fx=45.0)
    params = random_scene(60, cam, seed=5)
    params[2][:10] = -20.0  # vanishing: only the 0.3 px blur is left
    params[2][10:20, 0] = params[2][10:20, 0] + 3.0  # needle-like: ~20x longer than wide
    params[2][10:20, 1:] = params[2][10:20, 1:] - 2.0
    out, ps = render(params, cam, backend)
    run_backward(out)
    for t in (out.color, out.alpha, out.depth, out.extras):
        assert torch.isfinite(t).all()
    for name, p in zip(NAMES, ps):
        assert torch.isfinite(p.grad).all(), name
    assert (out.meta["radii"][:20] > 0).any()
    if backend == "cpu":
        assert_outputs_close(both_backends(params, cam))


def test_zero_gaussians(backend):
    cam = make_camera(20, 10)
    params = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3),
              torch.zeros(0, 2)]
    bg = torch.tensor([0.25, 0.5, 0.75])
    out, ps = render(params, cam, backend, background=bg)
    assert torch.equal(out.color, bg.expand(10, 20, 3))
    assert torch.equal(out.alpha, torch.zeros(10, 20))
    assert torch.equal(out.depth, torch.zeros(10, 20))
    assert out.extras.shape == (10, 20, 2)
    run_backward(out)
    for p in ps:
        assert p.grad is not None and p.grad.shape == p.shape


def test_background_blend(backend):
    """A black background (given or not) changes nothing; any other is blended by 1 - alpha, and its
    gradient reaches alpha (so every Gaussian parameter)."""
    cam = make_camera(40, 30)
    scene = random_scene(60, cam, seed=11)
    outs = {}
    for name, bg in (("none", None), ("black", torch.zeros(3)), ("grey", torch.tensor([0.2, 0.5, 1.0]))):
        out, params = render(scene, cam, backend, background=bg)
        loss = (out.color * torch.linspace(0.5, 1.5, 3)).sum()
        loss.backward()
        outs[name] = (out, [p.grad for p in params])
    (none, g_none), (black, g_black), (grey, g_grey) = outs["none"], outs["black"], outs["grey"]
    assert torch.equal(none.color, black.color) and all(torch.equal(a, b) for a, b in zip(g_none, g_black))
    blended = none.color + (1.0 - none.alpha)[..., None] * torch.tensor([0.2, 0.5, 1.0])
    torch.testing.assert_close(grey.color, blended, rtol=0, atol=1e-6)
    assert not torch.allclose(g_grey[3], g_none[3])  # opacities feel the background
    assert torch.equal(none.depth, black.depth) and torch.isfinite(none.depth).all()
