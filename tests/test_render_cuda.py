"""The cuda backend (gsplat) against the cpu backend; skipped on machines without a GPU and gsplat."""

from __future__ import annotations

import pytest
import torch

from moegs.cameras import Camera, look_at
from moegs.render import rasterize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_matches_cpu():
    pytest.importorskip("gsplat")
    g = torch.Generator().manual_seed(0)
    n, w, h = 2000, 96, 64
    inputs = [torch.randn(n, 3, generator=g) * 0.7, torch.randn(n, 4, generator=g),
              torch.randn(n, 3, generator=g) * 0.3 - 3.0, torch.randn(n, generator=g),
              torch.rand(n, 3, generator=g)]
    extras = torch.rand(n, 2, generator=g)
    cam = Camera(look_at(torch.tensor([0.0, -4.0, 0.5]), torch.zeros(3)), fx=90, fy=90, cx=48, cy=32, width=w, height=h)
    outs = {}
    for backend, dev in (("cpu", "cpu"), ("cuda", "cuda")):
        ps = [t.to(dev).requires_grad_() for t in inputs]
        out = rasterize(*ps, cam.to(dev), extras=extras.to(dev), backend=backend)
        (out.color.sum() + out.extras.sum()).backward()
        outs[backend] = (out, [p.grad.cpu() for p in ps])
    a, b = outs["cpu"][0], outs["cuda"][0]
    assert (a.color - b.color.cpu()).abs().max() < 1e-3
    assert (a.extras - b.extras.cpu()).abs().max() < 1e-3
    assert (a.alpha - b.alpha.cpu()).abs().max() < 1e-3
    for ga, gb in zip(outs["cpu"][1], outs["cuda"][1]):
        assert torch.allclose(ga, gb, rtol=1e-2, atol=1e-4)


def test_training_with_densification_on_cuda(toy_scene, tmp_path):
    """A short run on the GPU that clones, splits and prunes (every densification op on device tensors)."""
    pytest.importorskip("gsplat")
    from moegs.train import TrainConfig
    from moegs.train.run import train_expert

    cfg = TrainConfig(expert="static", steps=30, backend="cuda", device="cuda", log_every=5, eval_at_end=False)
    cfg.strategy.refine_start_iter, cfg.strategy.refine_every, cfg.strategy.grow_grad2d = 5, 5, 1e-6
    cfg.strategy.prune_opa = 0.1
    train_expert(toy_scene, cfg, tmp_path, progress=False)
    import json

    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("cloned", 0) + r.get("split", 0) for r in recs) > 0
    assert recs[-1]["loss"] < recs[0]["loss"]
