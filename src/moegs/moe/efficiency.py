"""Efficiency of a mixture: quality, speed and size of each expert alone, of the mixture rendered
one pass per expert and in one pass, and of the same two after gate-aware pruning.

Every row is measured on the same test views with :func:`moegs.eval.evaluate_renderer` (PSNR, SSIM,
frames per second of the render calls alone); the frozen-expert render cache is off while timing,
so every frame pays for its experts' Gaussians, projection and binning.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data import Scene, View
from ..eval import evaluate_renderer
from ..experts import render_expert
from .ablation import format_table
from .mixture import Mixture
from .prune import gate_prune

__all__ = ["efficiency_table", "format_efficiency_table", "COLUMNS"]

COLUMNS = ["model", "psnr", "ssim", "fps", "gaussians", "mb"]


def _size(modules: list[nn.Module]) -> tuple[int, float]:
    """Gaussians (entries of every expert's ``splats``) and MB of every parameter and buffer of ``modules``."""
    n = sum(sub.splats["means"].shape[0] for m in modules for sub in m.modules() if hasattr(sub, "splats"))
    nbytes = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    return n, nbytes / 2**20


@torch.no_grad()
def _mixture_rows(mixture: Mixture, scene: Scene, views: list[View], label: str) -> list[dict]:
    n, mb = _size([mixture])
    rows = []
    cache_mb, single = mixture.cache_mb, mixture.single_pass
    mixture.cache_mb = 0.0
    try:
        for sp, name in ((False, "K-pass"), (True, "single-pass")):
            mixture.single_pass = sp
            res = evaluate_renderer(lambda v: mixture.render(v).color, scene, views, use_lpips=False)
            rows.append({"model": f"{label} {name}", "psnr": res["psnr"], "ssim": res["ssim"], "fps": res["render_fps"],
                         "gaussians": n, "mb": mb})
    finally:
        mixture.cache_mb, mixture.single_pass = cache_mb, single
    return rows


def efficiency_table(mixture: Mixture, scene: Scene, *, views: list[View] | None = None,
                     prune_views: list[View] | None = None, prune_threshold: float = 0.05) -> list[dict]:
    """Rows ``{"model", "psnr", "ssim", "fps", "gaussians", "mb"}``: each expert alone, the mixture
    (K-pass, single-pass) and a pruned copy of it (K-pass, single-pass).

    Args:
        mixture: a trained mixture (left unchanged: pruning acts on a copy).
        scene: the scene; views: where quality and speed are measured (default: its test views).
        prune_views: views whose contributions decide the pruning (default: the training views).
        prune_threshold: contribution (pixels) under which a Gaussian is removed (:func:`gate_prune`).
    """
    views = scene.test_views if views is None else views
    rows = []
    with torch.no_grad():
        for name, e in zip(mixture.names, mixture.experts):
            res = evaluate_renderer(lambda v, e=e: render_expert(e, v.camera, v.time, background=scene.background,
                                                                   backend=mixture.backend).color,
                                    scene, views, use_lpips=False)
            n, mb = _size([e])
            rows.append({"model": name, "psnr": res["psnr"], "ssim": res["ssim"], "fps": res["render_fps"],
                         "gaussians": n, "mb": mb})
    rows += _mixture_rows(mixture, scene, views, "mixture")
    pruned = copy.deepcopy(mixture)
    pruned.clear_cache()
    gate_prune(pruned, scene.train_views if prune_views is None else prune_views, prune_threshold)
    rows += _mixture_rows(pruned, scene, views, "pruned")
    return rows


def format_efficiency_table(rows: list[dict]) -> str:
    """The rows of :func:`efficiency_table` as an aligned plain-text table, with each row's FPS
    relative to the fastest single expert."""
    experts = [r for r in rows if not r["model"].startswith(("mixture ", "pruned "))]
    best = max((r["fps"] for r in experts), default=None)
    table = [dict(r, fps_vs_fastest_expert=(r["fps"] / best) if best else None) for r in rows]
    return format_table(table, COLUMNS + ["fps_vs_fastest_expert"])
