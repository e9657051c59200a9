"""Evaluation of a mixture on held-out views: image metrics plus how the router uses its experts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..data import Scene, View
from ..eval import evaluate_renderer
from .mixture import Mixture

__all__ = ["evaluate_mixture"]


@torch.no_grad()
def evaluate_mixture(mixture: Mixture, scene: Scene, views: list[View] | None = None, *,
                     out_dir: Path | None = None, use_lpips: bool = True) -> dict:
    """PSNR/SSIM/LPIPS/FPS of the blended render on ``views`` (default: test views), plus
    ``usage`` ``[K]`` (mean weight per expert) and ``argmax_share`` ``[K]`` (share of pixels each expert wins)."""
    views = scene.test_views if views is None else views
    usage = torch.zeros(mixture.num_experts)  # cpu: host-side statistics of the .cpu() weights
    wins = torch.zeros(mixture.num_experts)  # cpu: host-side statistics of the .cpu() weights

    def render(v: View) -> Tensor:
        out = mixture.render(v)
        w = out.weights.detach().cpu()
        usage.add_(w.mean(dim=(0, 1)) / len(views))
        wins.add_(torch.bincount(w.argmax(-1).flatten(), minlength=w.shape[-1]).float() / w[..., 0].numel()
                  / len(views))
        return out.color

    mixture.eval()
    try:
        res = evaluate_renderer(render, scene, views, out_dir, use_lpips)
    finally:
        mixture.train()
    # evaluate_renderer renders every view once, so usage covers each view exactly once.
    res["usage"] = usage.tolist()
    res["argmax_share"] = wins.tolist()
    res["num_gaussians"] = [int(e.splats["means"].shape[0]) for e in mixture.experts]
    return res
