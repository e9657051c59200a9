"""Tests of the fused HexPlane sampler (``_hexplane_cpu``) against the ``grid_sample`` reference
(``HexPlaneField(..., backend="torch")``): forward values and every gradient on the border cases
(coordinates outside ``[-1, 1]``, exactly on the edges and on cell boundaries, size-1 axes, N = 0 and 1),
a float64 gradcheck, determinism across runs and thread counts, and the ``auto`` dispatch."""

from __future__ import annotations

import pytest
import torch

from moegs.experts import _hexplane_cpu
from moegs.experts.hexplane import PLANES, HexPlaneField, sample_planes_torch


@pytest.fixture(autouse=True)
def native():
    if not _hexplane_cpu.available():
        pytest.skip(f"compiled CPU HexPlane sampler unavailable: {_hexplane_cpu.build_error()}")


def make_field(resolution=(5, 6, 7, 4), multires=(1, 2), channels=6, *, dtype=torch.float32, seed=0) -> HexPlaneField:
    """A field whose planes are random in [-1, 1] (signed values: gradients do not all share a sign)."""
    field = HexPlaneField(channels, resolution, multires, 0.1, 0.5).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) * 2 - 1)
    return field


def make_coords(n, *, dtype=torch.float32, seed=1) -> torch.Tensor:
    """``[n, 4]`` coordinates: most inside, some outside ``[-1, 1]``, some exactly on -1 / 1 / 0."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 4, generator=g, dtype=dtype) * 2.8 - 1.4
    edge = torch.rand(n, 4, generator=g) < 0.1
    c[edge] = torch.tensor([-1.0, 1.0, 0.0], dtype=dtype)[torch.randint(0, 3, (int(edge.sum()),), generator=g)]
    return c


def run(field: HexPlaneField, coords: torch.Tensor, backend: str, seed: int = 2):
    """Features, and the gradients of a random linear loss w.r.t. coords and every plane."""
    field.zero_grad()
    c = coords.clone().requires_grad_()
    out = field(c, backend=backend)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * w).sum().backward()
    return out.detach(), c.grad, [p.grad.clone() for p in field.parameters()]


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().clamp_min(1e-30)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max() / scale) <= rel, float((actual - expected).abs().max() / scale)


@pytest.mark.parametrize(
    "resolution,multires,n",
    [
        ((5, 6, 7, 4), (1, 2), 2000),  # several levels, coords outside / on the edges
        ((1, 6, 3, 1), (1, 3), 300),  # size-1 axes (x at level 1; t at every level)
        ((4, 4, 4, 4), (1,), 1),  # one Gaussian
        ((4, 5, 6, 3), (1, 2), 0),  # no Gaussian
    ],
)
def test_matches_grid_sample_forward_and_gradients(resolution, multires, n):
    field = make_field(resolution, multires)
    coords = make_coords(n)
    ref, ref_gc, ref_gp = run(field, coords, "torch")
    out, gc, gp = run(field, coords, "cpu")
    assert out.shape == (n, field.out_dim) and gc.shape == (n, 4)
    if n:
        assert float((out - ref).abs().max()) < 1e-6
        assert_rel(gc, ref_gc, 1e-5)
    for a, b in zip(gp, ref_gp, strict=True):
        if n:
            assert_rel(a, b, 1e-5)
        else:
            assert torch.all(a == 0)


def test_cell_boundaries_and_clamped_coords_have_the_reference_gradient():
    """Coordinates exactly on cell corners (inside and on the border) and beyond it: grid_sample's
    one-sided derivative inside, zero once clamped."""
    field = make_field((5, 5, 5, 5), (1,), dtype=torch.float64)
    cells = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64)  # corners of 5 cells: k/2 - 1
    coords = torch.cartesian_prod(cells, cells, cells, cells)
    ref, ref_gc, ref_gp = run(field, coords, "torch")
    out, gc, gp = run(field, coords, "cpu")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gc, ref_gc, rtol=1e-10, atol=1e-10)
    assert torch.all(gc[(coords.abs() >= 1.0)] == 0)
    for a, b in zip(gp, ref_gp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float64_matches_reference_and_float32_inputs_are_not_promoted():
    field = make_field(dtype=torch.float64)
    coords = make_coords(500, dtype=torch.float64)
    ref, ref_gc, ref_gp = run(field, coords, "torch")
    out, gc, gp = run(field, coords, "cpu")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    assert_rel(gc, ref_gc, 1e-11)
    for a, b in zip(gp, ref_gp, strict=True):
        assert_rel(a, b, 1e-11)
    assert make_field()(make_coords(10), backend="cpu").dtype == torch.float32


def test_gradcheck_float64():
    """Finite differences on coordinates kept 0.1 cell away from cell boundaries and the border,
    and on some beyond the border (zero derivative)."""
    res = (3, 4, 5, 3)
    g = torch.Generator().manual_seed(3)
    n = 12
    sizes = torch.tensor(res, dtype=torch.float64)
    cell = torch.floor(torch.rand(n, 4, generator=g, dtype=torch.float64) * (sizes - 1))
    frac = 0.1 + 0.8 * torch.rand(n, 4, generator=g, dtype=torch.float64)
    coords = 2 * (cell + frac) / (sizes - 1) - 1
    coords[:2, 0] = torch.tensor([-1.3, 1.2], dtype=torch.float64)  # clamped
    planes = [torch.rand(1, 3, res[j], res[i], generator=g, dtype=torch.float64).requires_grad_() for i, j in PLANES]
    coords.requires_grad_()

    def f(c, *ps):
        return _hexplane_cpu.sample_planes_cpu(c, ps, PLANES)

    assert torch.autograd.gradcheck(f, (coords, *planes), eps=1e-6, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(f(coords, *planes), sample_planes_torch(coords, planes, PLANES))


def test_deterministic_and_independent_of_thread_count():
    field = make_field((8, 8, 8, 5), (1, 2), channels=7)  # 7 channels: uneven ranges per thread
    coords = make_coords(3000)
    first = run(field, coords, "cpu")
    again = run(field, coords, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run(field, coords, "cpu")
        torch.set_num_threads(3)
        three = run(field, coords, "cpu")
    finally:
        torch.set_num_threads(threads)
    for other in (again, single, three):
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        assert all(torch.equal(a, b) for a, b in zip(first[2], other[2], strict=True))


def test_auto_uses_the_native_sampler_and_keeps_the_parameters():
    field = make_field()
    coords = make_coords(50)
    names = [n for n, _ in field.named_parameters()]
    assert torch.equal(field(coords), field(coords, backend="cpu"))
    assert names == [n for n, _ in field.named_parameters()]
    with pytest.raises(ValueError, match="backend"):
        field(coords, backend="cuda")


def test_auto_falls_back_to_grid_sample_when_the_sampler_cannot_build(monkeypatch):
    field = make_field()
    coords = make_coords(50)
    monkeypatch.setattr(_hexplane_cpu.HEXPLANE, "available", lambda: False)
    monkeypatch.setattr(_hexplane_cpu.HEXPLANE, "_warned", False)
    with pytest.warns(UserWarning, match="HexPlane sampler is unavailable"):
        out = field(coords)
    assert torch.equal(out, field(coords, backend="torch"))
