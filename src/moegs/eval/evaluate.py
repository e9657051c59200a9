"""Evaluation on held-out views: PSNR, SSIM, LPIPS, render FPS, model size, renders on disk."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data import Scene, View
from ..experts import render_expert
from ..io import atomic_path
from .lpips import load_lpips
from .metrics import psnr, ssim

__all__ = ["evaluate_renderer", "evaluate_expert", "model_size_mb", "save_png", "to_uint8"]

RenderFn = Callable[[View], Tensor]


def to_uint8(img: Tensor) -> np.ndarray:
    """``[H, W, 3]`` float in ``[0, 1]`` -> uint8 array."""
    return (img.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(path: Path, img: Tensor | np.ndarray) -> None:
    """Write a PNG atomically."""
    arr = img if isinstance(img, np.ndarray) else to_uint8(img)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def model_size_mb(module: nn.Module) -> float:
    """Size of ``module``'s state dict as ``torch.save`` writes it, in MB."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getbuffer().nbytes / 1e6


@torch.no_grad()
def evaluate_renderer(render: RenderFn, scene: Scene, views: list[View] | None = None,
                      out_dir: Path | None = None, use_lpips: bool = True) -> dict:
    """Mean PSNR/SSIM/LPIPS of ``render`` on ``views`` (default: the test views) and its FPS.

    Writes ``<out_dir>/<i>_<name>.png`` renders next to ``..._gt.png`` when ``out_dir`` is given.
    """
    views = scene.test_views if views is None else views
    if not views:
        raise ValueError(f"scene {scene.name!r} has no views to evaluate on")
    lp, note = load_lpips() if use_lpips else (None, "LPIPS not requested")
    rows = []
    t_render = 0.0
    for i, v in enumerate(views):
        gt = scene.image(v)
        t0 = time.perf_counter()
        img = render(v).detach().cpu()
        t_render += time.perf_counter() - t0
        row = {"view": v.camera.name or str(i), "time": v.time, "psnr": psnr(img, gt), "ssim": float(ssim(img.clamp(0, 1), gt))}
        if lp is not None:
            row["lpips"] = float(lp(img.clamp(0, 1), gt))
        rows.append(row)
        if out_dir is not None:
            stem = f"{i:04d}_{(v.camera.name or 'view').replace('/', '_')}"
            save_png(out_dir / f"{stem}.png", img)
            save_png(out_dir / f"{stem}_gt.png", gt)
    out = {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "lpips": float(np.mean([r["lpips"] for r in rows])) if lp is not None else None,
        "lpips_note": note,
        "num_views": len(rows),
        "render_fps": len(rows) / max(t_render, 1e-9),
        "per_view": rows,
    }
    return out


def evaluate_expert(expert: nn.Module, scene: Scene, views: list[View] | None = None, *, backend: str = "auto",
                    out_dir: Path | None = None, use_lpips: bool = True) -> dict:
    """:func:`evaluate_renderer` for one expert, plus its Gaussian count and size on disk."""
    def render(v: View) -> Tensor:
        return render_expert(expert, v.camera, v.time, background=scene.background, backend=backend).color

    expert.eval()
    try:
        res = evaluate_renderer(render, scene, views, out_dir, use_lpips)
    finally:
        expert.train()
    res["num_gaussians"] = int(expert.splats["means"].shape[0])
    res["size_mb"] = model_size_mb(expert)
    return res
