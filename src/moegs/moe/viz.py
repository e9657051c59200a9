"""Pictures of a mixture: colour-coded expert-weight maps (images and videos, with a legend), the
blended render beside each expert's render, and the per-expert usage histogram over a set of views.

A weight map is ``sum_k w_k(p) c_k`` with one colour ``c_k`` per expert (matplotlib's ``tab10``),
so a pixel shows its dominant expert's colour and mixed pixels show mixed colours.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from ..cameras import Camera
from ..data import Scene, View
from ..data.video import write_video
from ..eval import to_uint8
from .mixture import Mixture, MixtureOutput

__all__ = ["expert_palette", "weight_map_rgb", "legend_strip", "frame_panel", "save_weight_figure",
           "render_weight_video", "usage_histogram"]


def expert_palette(num_experts: int) -> Tensor:
    """``[K, 3]`` one distinct colour per expert (``tab10``, then ``tab20``)."""
    cmap = matplotlib.colormaps["tab10" if num_experts <= 10 else "tab20"]
    return torch.tensor([cmap(k % cmap.N)[:3] for k in range(num_experts)], dtype=torch.float32)  # cpu: figure colours


def weight_map_rgb(weights: Tensor, palette: Tensor | None = None) -> Tensor:
    """``weights`` ``[H, W, K]`` -> ``[H, W, 3]`` colour-coded map ``sum_k w_k c_k``."""
    palette = expert_palette(weights.shape[-1]) if palette is None else palette
    return weights.detach().float().cpu() @ palette


def legend_strip(names: list[str], width: int, height: int = 18, palette: Tensor | None = None) -> np.ndarray:
    """``[height, width, 3]`` uint8 legend: a colour swatch and the name of every expert."""
    palette = expert_palette(len(names)) if palette is None else palette
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    fig.legend(handles=[Patch(color=palette[k].tolist(), label=n) for k, n in enumerate(names)], loc="center",
               ncol=len(names), frameon=False, fontsize=max(5, int(height * 0.45)), handlelength=1.0,
               borderaxespad=0.0, columnspacing=1.0)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return img[:height, :width]


def frame_panel(out: MixtureOutput, names: list[str]) -> np.ndarray:
    """``[H + legend, (K + 2) W, 3]`` uint8: blended render | weight map | each expert's render, legend below."""
    tiles = [out.color, weight_map_rgb(out.weights), *out.expert_colors]
    row = np.concatenate([to_uint8(t) for t in tiles], axis=1)
    legend = legend_strip(["blend", "weights"] + names, row.shape[1],
                          palette=torch.cat((torch.ones(2, 3), expert_palette(len(names)))))  # cpu: figure colours
    return np.concatenate((row, legend), axis=0)


@torch.no_grad()
def save_weight_figure(out: MixtureOutput, names: list[str], path: str | Path, gt: Tensor | None = None,
                       title: str = "") -> Path:
    """A PNG figure: (ground truth,) blended render, colour-coded weight map with legend, each expert's render."""
    panels = ([("ground truth", gt)] if gt is not None else []) + [("mixture", out.color),
                                                                   ("expert weights", weight_map_rgb(out.weights))]
    panels += [(n, c) for n, c in zip(names, out.expert_colors)]
    fig = Figure(figsize=(2.6 * len(panels), 2.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (label, img) in zip(axes[0], panels):
        ax.imshow(img.detach().clamp(0, 1).cpu().numpy())
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    pal = expert_palette(len(names))
    fig.legend(handles=[Patch(color=pal[k].tolist(), label=n) for k, n in enumerate(names)], loc="lower center",
               ncol=len(names), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


@torch.no_grad()
def render_weight_video(mixture: Mixture, camera: Camera, times: list[float], path: str | Path,
                        fps: float = 10.0) -> Path:
    """An mp4 of :func:`frame_panel` for ``camera`` at each of ``times``."""
    names = mixture.names
    frames = (frame_panel(mixture.render(camera, t), names) for t in times)
    return write_video(path, frames, fps)


@torch.no_grad()
def usage_histogram(mixture: Mixture, scene: Scene, path: str | Path, views: list[View] | None = None,
                    bins: int = 20) -> dict:
    """Per-expert usage over ``views`` (default: test views) as a PNG.

    Left: the histogram of each expert's per-pixel weight; right: each expert's mean weight and the
    share of pixels where it has the largest weight.

    Returns:
        ``{"usage": [K], "argmax_share": [K], "hist": [K, bins]}`` (histograms as pixel fractions).
    """
    views = scene.test_views if views is None else views
    K = mixture.num_experts
    hist = torch.zeros(K, bins)  # cpu: host-side statistics of the .cpu() weights
    usage, wins, pixels = torch.zeros(K), torch.zeros(K), 0  # cpu: as hist
    for v in views:
        w = mixture.render(v).weights.detach().cpu().reshape(-1, K)
        pixels += w.shape[0]
        usage += w.sum(0)
        wins += torch.bincount(w.argmax(-1), minlength=K).float()
        for k in range(K):
            hist[k] += torch.histc(w[:, k], bins=bins, min=0.0, max=1.0)
    usage, wins, hist = usage / pixels, wins / pixels, hist / pixels
    names, pal = mixture.names, expert_palette(K)
    fig = Figure(figsize=(9, 3.2))
    a, b = fig.subplots(1, 2)
    centres = (torch.arange(bins) + 0.5) / bins  # cpu: figure axis
    for k in range(K):
        a.plot(centres.numpy(), hist[k].numpy(), color=pal[k].tolist(), marker="o", ms=3, label=names[k])
    a.set_yscale("log")
    a.set_xlabel("per-pixel weight")
    a.set_ylabel("fraction of pixels")
    a.legend(fontsize=8)
    x = np.arange(K)
    b.bar(x - 0.2, usage.numpy(), 0.4, color=[pal[k].tolist() for k in range(K)], label="mean weight")
    b.bar(x + 0.2, wins.numpy(), 0.4, color=[pal[k].tolist() for k in range(K)], alpha=0.5, hatch="//",
          label="share of pixels won")
    b.set_xticks(x, names, fontsize=8)
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    fig.suptitle(f"expert usage over {len(views)} views", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return {"usage": usage.tolist(), "argmax_share": wins.tolist(), "hist": hist.tolist()}
