"""Evaluation of a mixture on held-out views: image metrics, how the router uses its experts, and how
much of the per-pixel oracle's headroom over the best expert the router realises."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Scene, View
from ..eval import evaluate_renderer
from ..eval.metrics import psnr
from .mixture import Mixture, MixtureOutput

__all__ = ["evaluate_mixture", "oracle_image", "blend_oracle_image", "oracle_headroom", "region_psnr",
           "ORACLE_BLOCKS"]

# Tile sizes (pixels) of the coarser oracles reported beside the per-pixel one.
ORACLE_BLOCKS = (4, 16)


def oracle_image(expert_colors: Tensor, target: Tensor, block: int = 1) -> Tensor:
    """The oracle: in every ``block`` x ``block`` tile of pixels the expert closest to ``target``.

    ``block=1`` is the per-pixel oracle. Larger blocks bound what a router can reach whose choice
    varies over the image no faster than the blocks, which a per-pixel oracle overstates: where
    experts are equally good, picking the luckiest one per pixel removes noise no router can predict.

    Args:
        expert_colors: ``[K, H, W, 3]`` each expert's render (compared clamped to ``[0, 1]``).
        target: ``[H, W, 3]`` the ground truth.
        block: tile size in pixels (tiles at the right and bottom edges may be smaller).

    Returns:
        ``[H, W, 3]``: each tile taken from the expert with the smallest squared error over it.
    """
    if expert_colors.ndim != 4 or expert_colors.shape[1:] != target.shape:
        raise ValueError(f"expert colours {tuple(expert_colors.shape)} do not match the target {tuple(target.shape)}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    c = expert_colors.clamp(0, 1)
    H, W = target.shape[:2]
    err = ((c - target) ** 2).sum(-1)  # [K, H, W]
    if block > 1:
        # per-tile mean errors (ceil_mode keeps the partial edge tiles, averaged over the pixels inside)
        err = F.avg_pool2d(err[None], block, stride=block, ceil_mode=True)[0]
        err = err.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W]
    best = err.argmin(0)  # [H, W]
    return torch.gather(c, 0, best[None, ..., None].expand(1, *target.shape))[0]


def _project_simplex(w: Tensor) -> Tensor:
    """Euclidean projection of each row of ``w`` ``[T, K]`` onto the probability simplex (sort-based)."""
    u = w.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    k = torch.arange(1, w.shape[-1] + 1, dtype=w.dtype, device=w.device)
    rho = (u - css / k > 0).sum(-1, keepdim=True)  # [T, 1], at least 1
    theta = css.gather(-1, rho - 1) / rho.to(w.dtype)
    return (w - theta).clamp_min(0)


def blend_oracle_image(expert_colors: Tensor, target: Tensor, block: int, iters: int = 1000,
                       tol: float = 1e-6) -> Tensor:
    """The blend oracle: in every ``block`` x ``block`` tile the convex blend of the experts closest to ``target``.

    The weights ``w`` (``w_k >= 0``, ``sum_k w_k = 1``) of each tile minimise the squared error over the
    tile, ``w^T A w - 2 b^T w`` with ``A_kl = mean_p <c_k(p), c_l(p)>`` and ``b_k = mean_p <c_k(p), y(p)>``,
    solved by accelerated projected gradient (FISTA) until no weight moves by more than ``tol``. This is what a router whose weights
    vary over the image no faster than the tiles could reach at best, blending rather than choosing:
    at least :func:`oracle_image` of the same ``block``, whose choices are the simplex's corners.

    Args:
        expert_colors: ``[K, H, W, 3]`` each expert's render (blended clamped to ``[0, 1]``).
        target: ``[H, W, 3]`` the ground truth.
        block: tile size in pixels (edge tiles may be smaller).
        iters: at most this many projected-gradient iterations.
        tol: convergence threshold on the largest change of a weight in one iteration.

    Returns:
        ``[H, W, 3]`` each tile's best blend.
    """
    if expert_colors.ndim != 4 or expert_colors.shape[1:] != target.shape:
        raise ValueError(f"expert colours {tuple(expert_colors.shape)} do not match the target {tuple(target.shape)}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    c = expert_colors.clamp(0, 1).double()
    y = target.double()
    K, H, W = c.shape[:3]

    def tile_means(x: Tensor) -> Tensor:  # [M, H, W] -> [M, Th * Tw]; a tile's scale leaves its minimiser alone
        return F.avg_pool2d(x[None], block, stride=block, ceil_mode=True)[0].flatten(1)

    ii, jj = torch.triu_indices(K, K)
    pairs = tile_means((c[ii] * c[jj]).sum(-1))  # [P, T]
    A = c.new_zeros(K, K, pairs.shape[1])
    A[ii, jj] = pairs
    A[jj, ii] = pairs
    A = A.permute(2, 0, 1)  # [T, K, K]
    b = tile_means((c * y).sum(-1)).T  # [T, K]
    step = 1.0 / torch.linalg.eigvalsh(A)[:, -1:].clamp_min(1e-12)  # [T, 1]: 1 / L on half the gradient, A w - b
    w = torch.full_like(b, 1.0 / K)
    z, t = w, 1.0
    for _ in range(iters):
        w_next = _project_simplex(z - step * (torch.einsum("tkl,tl->tk", A, z) - b))
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = w_next + ((t - 1) / t_next) * (w_next - w)
        moved = float((w_next - w).abs().max())
        w, t = w_next, t_next
        if moved <= tol:
            break
    th, tw = -(-H // block), -(-W // block)
    wmap = w.T.reshape(K, th, tw).repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W]
    return torch.einsum("khw,khwc->hwc", wmap, c).to(target.dtype)


def _renders(mixture: Mixture, scene: Scene, views: list[View]) -> Iterator[tuple[View, MixtureOutput, Tensor]]:
    """``(view, mixture output, ground truth [H, W, 3])`` for each of ``views``, rendered in eval mode (the
    mixture's mode is restored after the last, or when the caller stops early)."""
    was_training = mixture.training
    mixture.eval()
    try:
        for v in views:
            out = mixture.render(v)
            yield v, out, scene.image(v).to(out.color.device)
    finally:
        mixture.train(was_training)


@torch.no_grad()
def oracle_headroom(mixture: Mixture, scene: Scene, views: list[View], blocks: tuple[int, ...] = ORACLE_BLOCKS) -> dict:
    """The mixture, each expert and the oracles (:func:`oracle_image`, per pixel and per tile) on ``views``.

    PSNRs are means over the views of each view's PSNR (as :func:`~moegs.eval.evaluate_renderer`).

    Returns:
        ``mixture_psnr``, ``expert_psnr`` ``[K]``, ``best_expert`` (index of the highest mean),
        ``oracle_psnr`` (per pixel), ``gain_db`` (mixture - best expert), ``realised``: the fraction of the
        per-pixel oracle's headroom the mixture reaches, ``gain_db / (oracle_psnr - best expert)``, and
        ``block_oracle_psnr``: ``{b: PSNR}`` of the oracle choosing per ``b`` x ``b`` tile for each of ``blocks``,
        and ``blend_oracle_psnr``: the same for the best blend per tile (:func:`blend_oracle_image`).
    """
    rows = []
    for _, out, gt in _renders(mixture, scene, views):
        rows.append([psnr(out.color, gt), psnr(oracle_image(out.expert_colors, gt), gt)]
                    + [psnr(oracle_image(out.expert_colors, gt, b), gt) for b in blocks]
                    + [psnr(blend_oracle_image(out.expert_colors, gt, b), gt) for b in blocks]
                    + [psnr(c, gt) for c in out.expert_colors])
    m = np.mean(np.array(rows, dtype=np.float64), axis=0)
    experts = [float(x) for x in m[2 + 2 * len(blocks):]]
    best = int(np.argmax(experts))
    gain = float(m[0]) - experts[best]
    room = float(m[1]) - experts[best]
    return {"mixture_psnr": float(m[0]), "expert_psnr": experts, "best_expert": best, "oracle_psnr": float(m[1]),
            "gain_db": gain, "realised": gain / room if room > 1e-9 else float("nan"),
            "block_oracle_psnr": {b: float(x) for b, x in zip(blocks, m[2:2 + len(blocks)])},
            "blend_oracle_psnr": {b: float(x) for b, x in zip(blocks, m[2 + len(blocks):2 + 2 * len(blocks)])}}


@torch.no_grad()
def region_psnr(mixture: Mixture, scene: Scene, views: list[View], labels: Callable[[View], Tensor],
                regions: Sequence[str]) -> list[dict]:
    """The mixture and each expert, region by region: which expert is best where, and what the blend adds there.

    A region's PSNR is over all of its pixels in all ``views`` together (the mean squared error pooled
    over them, colours clamped to ``[0, 1]``), so a region seen in few pixels of a view weighs by its
    pixels, not by its views.

    Args:
        labels: ``labels(view)`` is ``[H, W]`` int64, each pixel's index into ``regions`` (-1: in none).
        regions: the regions' names.

    Returns:
        One dict per region seen in ``views``: ``region``, ``share`` (its fraction of all pixels),
        ``error_share`` (its fraction of the mixture's squared error over all labelled pixels),
        ``mixture_psnr``, ``expert_psnr`` ``[K]`` and ``best_expert`` (index of the highest).
    """
    R, K = len(regions), mixture.num_experts
    sse = torch.zeros(R, K + 1, dtype=torch.float64)  # cpu: host-side sums
    count = torch.zeros(R, dtype=torch.float64)  # cpu: host-side sums
    total = 0
    for v, out, gt in _renders(mixture, scene, views):
        lab = labels(v).cpu().flatten()
        images = torch.cat([out.color[None], out.expert_colors]).clamp(0, 1)  # [K + 1, H, W, 3]
        err = ((images - gt) ** 2).mean(-1).flatten(1).double().cpu()  # [K + 1, H * W]
        inside = lab >= 0
        sse.index_add_(0, lab[inside], err[:, inside].T)
        count += torch.bincount(lab[inside], minlength=R).double()
        total += lab.numel()
    rows = []
    for r in range(R):
        if count[r] == 0:
            continue
        p = (-10 * torch.log10(sse[r] / count[r])).tolist()
        rows.append({"region": regions[r], "share": float(count[r]) / total,
                     "error_share": float(sse[r, 0] / sse[:, 0].sum()), "mixture_psnr": p[0],
                     "expert_psnr": p[1:], "best_expert": int(np.argmax(p[1:]))})
    return rows


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
