"""Tests of the fused projection + colour op (backend ``cpu``) against the pure-PyTorch reference
(``project_and_color(backend="torch")``): forward values, every gradient, a float64 gradcheck, the
rasterizer's edge cases, and determinism across runs and thread counts."""

from __future__ import annotations

import math

import pytest
import torch

from moegs.cameras import Camera, look_at
from moegs.render import _project_cpu
from moegs.render.projection import project_and_color
from moegs.render.sh import num_sh_bases

INPUTS = ("means", "quats", "log_scales", "colors")


@pytest.fixture(autouse=True)
def native():
    if not _project_cpu.available():
        pytest.skip(f"compiled CPU projection unavailable: {_project_cpu.build_error()}")


def make_camera(width=40, height=30, *, cx=None, cy=None, dtype=torch.float32) -> Camera:
    """A camera at (0.3, -0.2, -4) looking at the origin (a rotated, translated world-to-camera)."""
    w2c = look_at(torch.tensor([0.3, -0.2, -4.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    return Camera(w2c.to(dtype), fx=1.1 * width, fy=1.0 * width, cx=float(width / 2 if cx is None else cx),
                  cy=float(height / 2 if cy is None else cy), width=width, height=height, near=0.1, far=50.0)


def make_gaussians(n, camera, *, sh_bases=None, dtype=torch.float32, seed=0):
    """``n`` Gaussians: most in the view, some far off-screen (the Jacobian clamp), some behind the
    camera or beyond ``far`` (culled), a few with log-scale -20; SH coefficients or RGB."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.linalg.inv(camera.world_to_camera.double())
    z = 1.0 + 5.0 * torch.rand(n, generator=g, dtype=torch.float64)
    u = (torch.rand(n, generator=g, dtype=torch.float64) * 1.4 - 0.2) * camera.width
    v = (torch.rand(n, generator=g, dtype=torch.float64) * 1.4 - 0.2) * camera.height
    kind = torch.arange(n) % 10
    u = torch.where(kind == 1, u + 6 * camera.width, u)  # far off-screen: clamped Jacobian, radius 0
    z = torch.where(kind == 2, -z, z)  # behind the camera
    z = torch.where(kind == 3, z + 60.0, z)  # beyond far
    p = torch.stack(((u - camera.cx) / camera.fx * z, (v - camera.cy) / camera.fy * z, z), -1)
    means = p @ c2w[:3, :3].T + c2w[:3, 3]
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    log_scales = math.log(2.0 / camera.fx) + torch.log(z.abs())[:, None] + 0.5 * torch.randn(n, 3, generator=g,
                                                                                              dtype=torch.float64)
    log_scales[kind == 4] = -20.0
    if sh_bases is None:
        colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        colors = 0.4 * torch.randn(n, sh_bases, 3, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, quats, log_scales, colors)]


def run(params, camera, backend, sh_degree=None, seed=1, keep=None, split=None):
    """Outputs and the gradients of a fixed random linear functional of every differentiable output;
    ``keep`` ``[N, 4]`` bool (optional) zeroes the functional's weights on (Gaussian, output) pairs;
    ``split`` (optional) hands the SH coefficients over as two parts, cut before band ``split`` (their
    gradients are returned concatenated)."""
    params = [p.detach().clone().requires_grad_() for p in params]
    colors = params[3]
    if split is not None:
        parts = [params[3][:, :split].detach().clone().requires_grad_(),
                 params[3][:, split:].detach().clone().requires_grad_()]
        colors = tuple(parts)
    proj, rgb = project_and_color(*params[:3], colors, camera, sh_degree=sh_degree, backend=backend)
    outs = (proj.means2d, proj.conics, proj.depths, rgb)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    if keep is not None:
        weights = [w * keep[:, j].reshape(-1, *[1] * (w.dim() - 1)).to(w.dtype) for j, w in enumerate(weights)]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    grads = [p.grad for p in params[:3]] + [torch.cat([p.grad for p in parts], 1) if split is not None else params[3].grad]
    return proj, rgb, grads


def _outputs(result):
    proj, rgb, _ = result
    return proj.means2d, proj.conics, proj.depths, proj.radii, rgb


def rel_err(a, b):
    scale = b.abs().max().clamp_min(1e-12)
    return float((a - b).abs().max() / scale)


def assert_matches(params, camera, sh_degree=None, fwd_tol=1e-5, grad_tol=1e-4, keep=None):
    pc, rc, gc = run(params, camera, "cpu", sh_degree, keep=keep)
    pt, rt, gt = run(params, camera, "torch", sh_degree, keep=keep)
    assert torch.equal(pc.radii, pt.radii)
    assert pc.radii.dtype == torch.int32
    for name, a, b in (("means2d", pc.means2d, pt.means2d), ("conics", pc.conics, pt.conics),
                       ("depths", pc.depths, pt.depths), ("rgb", rc, rt)):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.numel():
            # culled Gaussians' conics (det replaced by 1) can be large: compare each row to its own scale
            scale = b.abs().amax(-1, keepdim=True).clamp_min(1.0) if a.dim() == 2 else b.abs().clamp_min(1.0)
            assert float(((a - b).abs() / scale).max().detach()) < fwd_tol, name
    for name, a, b in zip(INPUTS, gc, gt):
        assert a is not None and a.shape == b.shape, name
        if a.numel():
            assert rel_err(a, b) < grad_tol, (name, rel_err(a, b))
    return pc, gc


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_forward_and_gradients_match_reference(sh_degree):
    cam = make_camera()
    bases = None if sh_degree is None else num_sh_bases(sh_degree)
    params = make_gaussians(400, cam, sh_bases=bases)
    proj, grads = assert_matches(params, cam, sh_degree)
    radii = proj.radii.view(-1, 10)
    assert (radii[:, 0] > 0).float().mean() > 0.5  # most in-view Gaussians are kept
    assert (radii[:, 1:4] == 0).all()  # off-screen, behind the camera and beyond far are culled
    assert (grads[0].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("n", [1, 5, 13, 403])
def test_counts_off_the_block_width_match_reference(n):
    """The native op takes Gaussians eight at a time: a short last block (its spare lanes repeat a Gaussian)
    changes nothing."""
    cam = make_camera()
    assert_matches(make_gaussians(n, cam, sh_bases=16), cam, 3)


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_gradients_where_upstream_reaches_only_some_outputs(sh_degree):
    """Gaussians no upstream gradient reaches (as the compositing leaves hidden or culled ones) get exact
    zeros; those reached through one output only (means2d, conics, depths or colour) the reference's."""
    cam = make_camera()
    params = make_gaussians(400, cam, sh_bases=None if sh_degree is None else 16)
    kind = torch.arange(400) % 7
    keep = torch.zeros(400, 4, dtype=torch.bool)
    keep[kind == 0] = True  # every output
    for j in range(4):
        keep[kind == j + 1, j] = True  # one output only; kind 5 and 6: none
    _, grads = assert_matches(params, cam, sh_degree, keep=keep)
    geometric = 3 if sh_degree is None else 4  # outputs that depend on means, quats and log_scales
    untouched = ~keep[:, :geometric].any(-1)
    for name, g in zip(INPUTS[:3], grads):
        assert (g[untouched] == 0).all(), name
    in_view = torch.arange(400) % 10 == 0  # make_gaussians' visible kind
    for j in range(geometric):
        assert (grads[0][(kind == j + 1) & in_view].abs().sum(-1) > 0).any(), j


def test_fewer_coefficients_used_than_held():
    cam = make_camera()
    params = make_gaussians(100, cam, sh_bases=16)
    _, grads = assert_matches(params, cam, sh_degree=1)
    assert (grads[3][:, 4:] == 0).all() and (grads[3][:, :4] != 0).any()


@pytest.mark.parametrize("width,height,cx,cy", [(1, 1, None, None), (37, 23, None, None), (50, 17, 5.0, 14.0),
                                                (16, 48, None, None)])
def test_image_sizes_and_principal_points(width, height, cx, cy):
    cam = make_camera(width, height, cx=cx, cy=cy)
    assert_matches(make_gaussians(200, cam, sh_bases=9, seed=3), cam, sh_degree=2)


def test_zero_gaussians():
    cam = make_camera()
    for bases in (None, 16):
        proj, rgb, grads = run(make_gaussians(0, cam, sh_bases=bases), cam, "cpu")
        assert proj.means2d.shape == (0, 2) and proj.conics.shape == (0, 3) and proj.radii.shape == (0,)
        assert rgb.shape == (0, 3) and all(g.shape[0] == 0 for g in grads)


def test_rejects_too_few_coefficients():
    cam = make_camera()
    params = make_gaussians(4, cam, sh_bases=4)
    with pytest.raises(ValueError, match="SH degree 2 needs 9"):
        project_and_color(*params, cam, sh_degree=2, backend="cpu")


def test_float64_gradcheck():
    cam = make_camera(24, 18, dtype=torch.float64)
    means, quats, log_scales, coeffs = make_gaussians(20, cam, sh_bases=16, dtype=torch.float64, seed=5)
    keep = torch.arange(20) % 10 != 4  # log-scale -20 makes finite differences meaningless
    params = [t[keep].clone().requires_grad_() for t in (means, quats, log_scales, coeffs)]

    def f(m, q, s, c):
        proj, rgb = project_and_color(m, q, s, c, cam, backend="cpu")
        return proj.means2d, proj.conics, proj.depths, rgb

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("split,sh_degree", [(1, 3), (4, 3), (16, 3), (1, 1), (0, 2)])
def test_coefficients_in_two_parts_equal_one_tensor(split, sh_degree):
    """SH coefficients given as two parts along the bands (as experts store sh0 / shN) render and
    differentiate exactly as their concatenation, on both backends; each part gets its slice of the gradient."""
    cam = make_camera()
    params = make_gaussians(300, cam, sh_bases=16, seed=4)
    for backend in ("cpu", "torch"):
        whole, parts = run(params, cam, backend, sh_degree), run(params, cam, backend, sh_degree, split=split)
        for a, b in zip((*_outputs(whole), *whole[2]), (*_outputs(parts), *parts[2])):
            assert torch.equal(a, b), backend


def test_float64_gradcheck_with_coefficients_in_two_parts():
    cam = make_camera(24, 18, dtype=torch.float64)
    means, quats, log_scales, coeffs = make_gaussians(20, cam, sh_bases=16, dtype=torch.float64, seed=5)
    keep = torch.arange(20) % 10 != 4
    params = [t[keep].clone().requires_grad_() for t in (means, quats, log_scales, coeffs[:, :1], coeffs[:, 1:])]

    def f(m, q, s, c0, c1):
        proj, rgb = project_and_color(m, q, s, (c0, c1), cam, backend="cpu")
        return proj.means2d, proj.conics, proj.depths, rgb

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_float64_matches_reference_tightly():
    cam = make_camera(dtype=torch.float64)
    assert_matches(make_gaussians(300, cam, sh_bases=16, dtype=torch.float64), cam, fwd_tol=1e-12, grad_tol=1e-10)


def test_deterministic_across_runs_and_thread_counts():
    cam = make_camera()
    params = make_gaussians(3000, cam, sh_bases=16, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p1, r1, g1 = run(params, cam, "cpu")
        torch.set_num_threads(2)
        p2, r2, g2 = run(params, cam, "cpu")
        p3, r3, g3 = run(params, cam, "cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip((p1.means2d, p1.conics, p1.depths, p1.radii, r1, *g1),
                       (p2.means2d, p2.conics, p2.depths, p2.radii, r2, *g2),
                       (p3.means2d, p3.conics, p3.depths, p3.radii, r3, *g3)):
        assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize("n,width,height,dtype", [(500, 40, 30, torch.float32), (300, 33, 17, torch.float64),
                                                   (0, 40, 30, torch.float32), (40, 1, 1, torch.float32),
                                                   (200, 200, 120, torch.float32)])
def test_native_binning_equals_the_reference(n, width, height, dtype):
    """The compiled tile binning gives exactly the PyTorch lists: offsets, ids (front to back within a
    tile, ties in index order) and tile ids, with culled, off-screen and behind-the-camera Gaussians."""
    from moegs.render.projection import bin_gaussians

    cam = make_camera(width, height, dtype=dtype)
    means, quats, log_scales, colors = make_gaussians(n, cam, dtype=dtype)
    proj, _ = project_and_color(means, quats, log_scales, colors, cam, backend="torch")
    depths = proj.depths.clone()
    if n >= 10:
        depths[5:10] = depths[0]  # equal depths: the order between them is the index order
    if n >= 40:  # the order of the values, whatever their signs: negative, -0 and +0 (equal), large
        depths[10:20] = -depths[10:20]
        depths[20], depths[21], depths[22], depths[23] = -0.0, 0.0, -0.0, 1e30
    ref = bin_gaussians(proj.means2d, proj.radii, depths, width, height, backend="torch")
    nat = bin_gaussians(proj.means2d, proj.radii, depths, width, height, backend="cpu")
    assert (nat.tiles_x, nat.tiles_y) == (ref.tiles_x, ref.tiles_y)
    for f in ("offsets", "flatten_ids", "tile_ids"):
        assert torch.equal(getattr(nat, f), getattr(ref, f)), f
    if n:
        assert 0 < int((proj.radii > 0).sum()) < n  # some culled, some binned


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_binning_depth_order_on_signs_ties_and_zeros(dtype):
    """Every Gaussian on one tile: the list is the stable depth order of torch.argsort, whatever the
    signs, with -0 equal to +0 and ties (many of them) in index order."""
    from moegs.render.projection import bin_gaussians

    g = torch.Generator().manual_seed(4)
    n = 3000
    depths = torch.randn(n, generator=g, dtype=dtype) * 10.0 ** torch.randint(-3, 4, (n,), generator=g)
    depths[::7] = depths[3]  # ties
    depths[1::11], depths[2::13] = -0.0, 0.0
    radii = torch.ones(n, dtype=dtype)
    radii[5::17] = 0  # culled
    means2d = torch.full((n, 2), 4.0, dtype=dtype)
    ref = bin_gaussians(means2d, radii, depths, 8, 8, backend="torch")
    nat = bin_gaussians(means2d, radii, depths, 8, 8, backend="cpu")
    assert torch.equal(nat.flatten_ids, ref.flatten_ids) and torch.equal(nat.offsets, ref.offsets)
    vis = torch.nonzero(radii > 0).squeeze(1)
    assert torch.equal(nat.flatten_ids, vis[torch.argsort(depths[vis], stable=True)])
