"""Tests of the fused SSIM (backend ``cpu``) against the pure-PyTorch reference
(``ssim(backend="torch")``): forward values on images smaller and larger than the window,
the gradient, a float64 gradcheck, identical images, determinism, and the dispatch; and of
the same op's L1 term (``ssim_and_l1``, the photometric loss) against ``F.l1_loss``."""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F

from moegs.eval import _ssim_cpu
from moegs.eval.metrics import ssim, ssim_and_l1
from moegs.train.loss import photometric_loss

SHAPES = [(1, 1, 1), (1, 1, 3), (3, 7, 3), (7, 3, 1), (5, 200, 1), (11, 11, 3), (30, 47, 3), (2, 17, 23, 3),
          (3, 12, 9, 1)]


@pytest.fixture(autouse=True)
def native():
    if not _ssim_cpu.available():
        pytest.skip(f"compiled CPU SSIM unavailable: {_ssim_cpu.build_error()}")


def make_pair(shape, dtype, seed=0):
    """A random image and a noisy, clamped copy of it (SSIM well inside (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(shape, generator=g, dtype=torch.float64)
    ref = (img + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return img.to(dtype), ref.to(dtype)


def spy(monkeypatch, name: str) -> list:
    """Wrap ``_ssim_cpu.<name>``; the returned list gets one entry per call."""
    calls = []
    real = getattr(_ssim_cpu, name)
    monkeypatch.setattr(_ssim_cpu, name, lambda *a: calls.append(1) or real(*a))
    return calls


def value_and_grad(img, ref, backend, **kw):
    x = img.clone().requires_grad_(True)
    s = ssim(x, ref, backend=backend, **kw)
    (g,) = torch.autograd.grad(s, x)
    return s.detach(), g


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape, dtype, tol):
    img, ref = make_pair(shape, dtype)
    native, reference = ssim(img, ref, backend="cpu"), ssim(img, ref, backend="torch")
    assert native.dtype == dtype and native.shape == ()
    assert abs(float(native) - float(reference)) < tol


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_matches_reference(shape, dtype, rtol):
    img, ref = make_pair(shape, dtype, seed=1)
    _, g_native = value_and_grad(img, ref, "cpu")
    _, g_ref = value_and_grad(img, ref, "torch")
    assert g_native.shape == img.shape and g_native.dtype == dtype
    assert float((g_native - g_ref).norm()) <= rtol * float(g_ref.norm())


def test_other_windows_match_reference():
    img, ref = make_pair((2, 19, 26, 3), torch.float64, seed=2)
    for window, sigma in ((1, 1.0), (3, 0.5), (7, 1.0), (15, 3.0)):
        s_native, g_native = value_and_grad(img, ref, "cpu", window=window, sigma=sigma)
        s_ref, g_ref = value_and_grad(img, ref, "torch", window=window, sigma=sigma)
        assert abs(float(s_native - s_ref)) < 1e-12
        assert float((g_native - g_ref).norm()) <= 1e-10 * float(g_ref.norm())


def test_gradcheck_float64():
    img, ref = make_pair((2, 6, 9, 2), torch.float64, seed=3)
    x = img.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ssim(t, ref, backend="cpu"), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_images(dtype):
    img, _ = make_pair((2, 20, 13, 3), dtype, seed=4)
    s, g = value_and_grad(img, img, "cpu")
    assert float(s) == pytest.approx(1.0, abs=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(g.abs().max()) < (1e-6 if dtype == torch.float32 else 1e-12)


def test_backward_is_deterministic_and_thread_independent():
    img, ref = make_pair((2, 57, 83, 3), torch.float32, seed=5)
    s1, g1 = value_and_grad(img, ref, "cpu")
    s2, g2 = value_and_grad(img, ref, "cpu")
    assert torch.equal(s1, s2) and torch.equal(g1, g2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        s3, g3 = value_and_grad(img, ref, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(s1, s3) and torch.equal(g1, g3)


def test_non_contiguous_and_upstream_gradient():
    img, ref = make_pair((13, 21, 3), torch.float64, seed=6)
    x = img.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)  # same values, other strides
    (g_native,) = torch.autograd.grad(3.0 * (1.0 - ssim(x, ref, backend="cpu")), x)
    (g_ref,) = torch.autograd.grad(3.0 * (1.0 - ssim(x, ref, backend="torch")), x)
    assert float((g_native - g_ref).norm()) <= 1e-10 * float(g_ref.norm())


def test_auto_dispatch(monkeypatch):
    img, ref = make_pair((9, 10, 3), torch.float64, seed=7)
    calls = spy(monkeypatch, "ssim_l1_cpu")
    ssim(img, ref)
    assert calls == [1]  # CPU images, odd window, a target without gradient: the fused op
    ssim(img, ref, window=10)
    r = ref.clone().requires_grad_(True)
    s = ssim(img, r)  # the target needs a gradient: the reference, differentiable w.r.t. both
    assert calls == [1]
    (g_ref,) = torch.autograd.grad(s, r)
    assert g_ref.shape == ref.shape and torch.isfinite(g_ref).all()
    with pytest.raises(ValueError, match="ref must not require"):
        ssim(img, r, backend="cpu")
    with pytest.raises(ValueError, match="unknown SSIM backend"):
        ssim(img, ref, backend="cuda")


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 7, 3), (30, 47, 3), (2, 17, 23, 3)])
def test_ssim_and_l1_match_reference(shape, dtype, rtol):
    img, ref = make_pair(shape, dtype, seed=8)
    ref[..., 0] = img[..., 0]  # exact ties
    results = {}
    for backend in ("cpu", "torch"):
        x = img.clone().requires_grad_(True)
        s, l1 = ssim_and_l1(x, ref, backend=backend)
        (g,) = torch.autograd.grad(0.8 * l1 + 0.2 * (1.0 - s), x)
        results[backend] = (s.detach(), l1.detach(), g)
    (s_n, l1_n, g_n), (s_r, l1_r, g_r) = results["cpu"], results["torch"]
    assert l1_n.dtype == dtype and l1_n.shape == ()
    assert abs(float(l1_n - F.l1_loss(img, ref))) <= rtol * float(l1_r) and abs(float(s_n - s_r)) < 10 * rtol
    assert float((g_n - g_r).norm()) <= rtol * float(g_r.norm())


def test_ssim_and_l1_gradcheck_and_single_terms():
    img, ref = make_pair((2, 6, 9, 2), torch.float64, seed=9)
    x = img.clone().requires_grad_(True)
    ref[0, 0] = img[0, 0]  # exact ties: the L1 gradient is 0 there, as torch's
    smooth = img[1:].clone().requires_grad_(True)  # no ties, where |.| has no derivative
    assert torch.autograd.gradcheck(lambda t: ssim_and_l1(t, ref[1:], backend="cpu"), (smooth,), eps=1e-6, atol=1e-8)
    # Only one output used: the other's gradient is absent, not garbage.
    (g_l1,) = torch.autograd.grad(ssim_and_l1(x, ref, backend="cpu")[1], x)
    assert torch.allclose(g_l1, torch.sign(img - ref) / img.numel(), rtol=0, atol=1e-15)
    (g_s,) = torch.autograd.grad(ssim_and_l1(x, ref, backend="cpu")[0], x)
    (g_s_ref,) = torch.autograd.grad(ssim(x, ref, backend="torch"), x)
    assert float((g_s - g_s_ref).norm()) <= 1e-10 * float(g_s_ref.norm())


def test_photometric_loss_is_the_fused_op(monkeypatch):
    img, ref = make_pair((12, 10, 3), torch.float32, seed=10)
    calls = spy(monkeypatch, "ssim_l1_cpu")
    x = img.clone().requires_grad_(True)
    loss = photometric_loss(x, ref, 0.2)
    (g,) = torch.autograd.grad(loss, x)
    assert calls == [1]
    x_ref = img.clone().requires_grad_(True)
    want = 0.8 * F.l1_loss(x_ref, ref) + 0.2 * (1.0 - ssim(x_ref, ref, backend="torch"))
    (g_want,) = torch.autograd.grad(want, x_ref)
    assert abs(float(loss.detach() - want.detach())) < 1e-6
    assert float((g - g_want).norm()) <= 1e-5 * float(g_want.norm())
