"""Pure-PyTorch reference compositing: the oracle the native backends are tested against.

It follows the tile rasterizer of 3DGS exactly (16x16 tiles, front-to-back
alpha blending, alpha clamped to 0.99, contributions below 1/255 skipped,
a pixel stops at the Gaussian that would bring its transmittance below 1e-4),
vectorised over (tile-Gaussian pair, pixel) and processed in chunks of whole
tiles so memory stays bounded; autograd gives the backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .projection import TileBins

__all__ = ["composite_torch", "ALPHA_MIN", "ALPHA_MAX", "T_MIN"]

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


def composite_torch(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] in (0, 1)
    features: Tensor,  # [N, D]
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = 16,
    chunk_elements: int = 1 << 18,
    *,
    expert_ids: Tensor | None = None,  # [N] int
    num_experts: int = 1,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite per-Gaussian features into an image, or into one image per expert.

    With ``expert_ids`` every expert has its own transmittance: expert ``e``'s image is what
    compositing its Gaussians alone (in the same depth order) gives.

    Args:
        means2d, conics, opacities, features: screen-space Gaussians (see ``Projected``).
        bins: per-tile depth-sorted Gaussian lists from ``bin_gaussians``.
        width, height: image size.
        chunk_elements: (pair x pixel) elements processed at once (~a quarter million).
        expert_ids: ``[N]`` expert of each Gaussian in ``[0, num_experts)``.
        num_experts: ``E``, the number of images when ``expert_ids`` is given.

    Returns:
        ``[H, W, D]`` composited features and ``[H, W]`` accumulated alpha (``[E, H, W, D]`` and
        ``[E, H, W]`` with ``expert_ids``).
    """
    D = features.shape[1]
    E = 1 if expert_ids is None else int(num_experts)
    P = tile_size * tile_size
    n_tiles = bins.tiles_x * bins.tiles_y
    dev, dt = means2d.device, means2d.dtype
    py, px = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    px, py = px.reshape(-1).to(dt) + 0.5, py.reshape(-1).to(dt) + 0.5  # [P] pixel centres within a tile
    eids = torch.zeros(means2d.shape[0], dtype=torch.long, device=dev) if expert_ids is None else expert_ids.long()

    offsets = bins.offsets.tolist()
    chunk_pairs = max(1, chunk_elements // P)
    feat_blocks, alpha_blocks = [], []
    a = 0
    while a < n_tiles:
        # Greedy chunk of whole tiles [a, b) holding at most chunk_pairs pairs (at least one tile).
        b = a + 1
        while b < n_tiles and offsets[b + 1] - offsets[a] <= chunk_pairs:
            b += 1
        pa, pb = offsets[a], offsets[b]
        # One front-to-back list per (tile, expert): a stable sort keeps the depth order in each.
        key = (bins.tile_ids[pa:pb] - a) * E + eids[bins.flatten_ids[pa:pb]]
        key, order = torch.sort(key, stable=True)
        ids = bins.flatten_ids[pa:pb][order]
        tiles = bins.tile_ids[pa:pb][order]
        ox = (tiles % bins.tiles_x).to(dt)[:, None] * tile_size
        oy = (tiles // bins.tiles_x).to(dt)[:, None] * tile_size
        dx = ox + px[None] - means2d[ids, 0:1]  # [M, P]
        dy = oy + py[None] - means2d[ids, 1:2]
        con = conics[ids]
        power = -0.5 * (con[:, 0:1] * dx * dx + con[:, 2:3] * dy * dy) - con[:, 1:2] * dx * dy
        alpha = (opacities[ids, None] * torch.exp(power)).clamp_max(ALPHA_MAX)
        alpha = torch.where((power <= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))

        # Exclusive transmittance within each list, in float64 so long lists keep precision.
        log1m = torch.log1p(-alpha.double())
        incl = torch.cumsum(log1m, 0)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # first pair of each pair's list
        incl = incl - torch.cat((incl.new_zeros(1, P), incl))[first]
        excl = incl - log1m
        with torch.no_grad():
            keep = incl >= math.log(T_MIN)
        w = (alpha * torch.exp(excl).to(dt)) * keep.to(dt)

        # Add each pair's [P, D] slab into its (tile, expert) block.
        fb = features.new_zeros((b - a) * E, P, D).index_add(0, key, w[..., None] * features[ids][:, None, :])
        ab = features.new_zeros((b - a) * E, P).index_add(0, key, w)
        feat_blocks.append(fb)
        alpha_blocks.append(ab)
        a = b

    def untile(x: Tensor) -> Tensor:
        x = x.view(bins.tiles_y, bins.tiles_x, E, tile_size, tile_size, -1).permute(2, 0, 3, 1, 4, 5)
        return x.reshape(E, bins.tiles_y * tile_size, bins.tiles_x * tile_size, -1)[:, :height, :width]

    feats, alphas = untile(torch.cat(feat_blocks)), untile(torch.cat(alpha_blocks)[..., None])[..., 0]
    return (feats[0], alphas[0]) if expert_ids is None else (feats, alphas)
