"""Efficiency of a mixture: quality, speed and size of each expert alone, of the mixture rendered
one pass per expert and in one pass, and of the same two after gate-aware pruning.

Every row is measured on the same test views: PSNR and SSIM with :func:`moegs.eval.evaluate_renderer`,
frames per second as the best of a few rounds in which all rows take turns (so that the machine's
other load affects them alike). The frozen-expert render cache is off while timing, so every frame
pays for its experts' Gaussians, projection and binning.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..data import Scene, View
from ..eval import evaluate_renderer
from ..experts import render_expert
from .ablation import format_table
from .mixture import Mixture
from .prune import DEFAULT_KEEP, gate_prune

__all__ = ["efficiency_table", "format_efficiency_table", "COLUMNS"]

COLUMNS = ["model", "psnr", "ssim", "fps", "gaussians", "mb"]


def _size(modules: list[nn.Module]) -> tuple[int, float]:
    """Gaussians (entries of every expert's ``splats``) and MB of every parameter and buffer of ``modules``."""
    n = sum(sub.splats["means"].shape[0] for m in modules for sub in m.modules() if hasattr(sub, "splats"))
    nbytes = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    return n, nbytes / 2**20


def _mixture_renderer(mixture: Mixture, single_pass: bool) -> Callable[[View], Tensor]:
    def render(v: View) -> Tensor:
        mixture.single_pass = single_pass
        return mixture.render(v).color
    return render


@torch.no_grad()
def _frames_per_second(renderers: dict[str, Callable[[View], Tensor]], views: list[View], repeats: int) -> dict:
    """FPS of each renderer over ``views``: the best of ``repeats`` rounds, the renderers taking turns
    within every round so that a change of the machine's load affects them alike."""
    best = {k: float("inf") for k in renderers}
    for _ in range(repeats):
        for k, render in renderers.items():
            t0 = time.perf_counter()
            for v in views:
                render(v)
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: len(views) / t for k, t in best.items()}


def efficiency_table(mixture: Mixture, scene: Scene, *, views: list[View] | None = None,
                     prune: Callable[[Mixture], object] | None = None, repeats: int = 3) -> list[dict]:
    """Rows ``{"model", "psnr", "ssim", "fps", "gaussians", "mb"}``: each of the mixture's experts alone (as the
    mixture holds them: after stage 3, fine-tuned with it), the mixture (K-pass, single-pass) and a pruned copy
    of it (K-pass, single-pass).

    Args:
        mixture: a trained mixture (left unchanged: pruning acts on a copy).
        scene: the scene; views: where quality and speed are measured (default: its test views).
        prune: prunes the copy in place, e.g. ``lambda m: prune_and_finetune(m, scene, config, metas)``
            (default: :func:`gate_prune` to ``DEFAULT_KEEP`` over the training views, no fine-tuning).
        repeats: timed rounds over ``views`` (FPS is the best round's).
    """
    views = scene.test_views if views is None else views
    pruned = copy.deepcopy(mixture)
    pruned.clear_cache()
    (prune or (lambda m: gate_prune(m, scene.train_views, DEFAULT_KEEP)))(pruned)
    models: dict[str, tuple[Callable[[View], Tensor], list[nn.Module]]] = {}
    for name, e in zip(mixture.names, mixture.experts):
        models[name] = (lambda v, e=e: render_expert(e, v.camera, v.time, background=scene.background,
                                                     backend=mixture.backend).color, [e])
    for label, m in (("mixture", mixture), ("pruned", pruned)):
        models[f"{label} K-pass"] = (_mixture_renderer(m, False), [m])
        models[f"{label} single-pass"] = (_mixture_renderer(m, True), [m])
    state = [(m, m.cache_mb, m.single_pass) for m in (mixture, pruned)]
    for m, _, _ in state:
        m.cache_mb = 0.0  # every frame pays for its experts' Gaussians, projection and bins
    try:
        with torch.no_grad():
            quality = {k: evaluate_renderer(r, scene, views, use_lpips=False) for k, (r, _) in models.items()}
            fps = _frames_per_second({k: r for k, (r, _) in models.items()}, views, repeats)
    finally:
        for m, cache_mb, single in state:
            m.cache_mb, m.single_pass = cache_mb, single
    rows = []
    for k, (_, mods) in models.items():
        n, mb = _size(mods)
        rows.append({"model": k, "psnr": quality[k]["psnr"], "ssim": quality[k]["ssim"], "fps": fps[k],
                     "gaussians": n, "mb": mb})
    return rows


def format_efficiency_table(rows: list[dict]) -> str:
    """The rows of :func:`efficiency_table` as an aligned plain-text table, with each row's FPS
    relative to the fastest single expert."""
    experts = [r for r in rows if not r["model"].startswith(("mixture ", "pruned "))]
    best = max((r["fps"] for r in experts), default=None)
    table = [dict(r, fps_vs_fastest_expert=(r["fps"] / best) if best else None) for r in rows]
    return format_table(table, COLUMNS + ["fps_vs_fastest_expert"])
