"""Pure-PyTorch reference compositing: the oracle the native backends are tested against.

It follows the tile rasterizer of 3DGS exactly (16x16 tiles, front-to-back
alpha blending, alpha clamped to 0.99, contributions below 1/255 skipped,
a pixel stops at the Gaussian that would bring its transmittance below 1e-4),
vectorised over (tile-Gaussian pair, pixel) and processed in chunks of whole
tiles so memory stays bounded; autograd gives the backward.
"""

from __future__ import annotations

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
) -> tuple[Tensor, Tensor]:
    """Alpha-composite per-Gaussian features into an image.

    Args:
        means2d, conics, opacities, features: screen-space Gaussians (see ``Projected``).
        bins: per-tile depth-sorted Gaussian lists from ``bin_gaussians``.
        width, height: image size.
        chunk_elements: (pair x pixel) elements processed at once (~a quarter million).

    Returns:
        ``[H, W, D]`` composited features and ``[H, W]`` accumulated alpha.
    """
    D = features.shape[1]
    P = tile_size * tile_size
    n_tiles = bins.tiles_x * bins.tiles_y
    dev, dt = means2d.device, means2d.dtype
    py, px = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    px, py = px.reshape(-1).to(dt) + 0.5, py.reshape(-1).to(dt) + 0.5  # [P] pixel centres within a tile

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
        ids = bins.flatten_ids[pa:pb]
        tiles = bins.tile_ids[pa:pb]
        ox = (tiles % bins.tiles_x).to(dt)[:, None] * tile_size
        oy = (tiles // bins.tiles_x).to(dt)[:, None] * tile_size
        dx = ox + px[None] - means2d[ids, 0:1]  # [M, P]
        dy = oy + py[None] - means2d[ids, 1:2]
        con = conics[ids]
        power = -0.5 * (con[:, 0:1] * dx * dx + con[:, 2:3] * dy * dy) - con[:, 1:2] * dx * dy
        alpha = (opacities[ids, None] * torch.exp(power)).clamp_max(ALPHA_MAX)
        alpha = torch.where((power <= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))

        # Per-tile exclusive transmittance, in float64 so long lists keep precision.
        log1m = torch.log1p(-alpha.double())
        incl = torch.cumsum(log1m, 0)
        seg = torch.as_tensor(offsets, device=dev)[tiles] - pa  # first pair of each pair's tile
        incl = incl - torch.cat((incl.new_zeros(1, P), incl))[seg]
        excl = incl - log1m
        with torch.no_grad():
            keep = incl >= torch.log(torch.tensor(T_MIN, dtype=torch.float64))
        w = (alpha * torch.exp(excl).to(dt)) * keep.to(dt)

        # Pairs are grouped by tile: add each pair's [P, D] slab into its tile's block.
        fb = features.new_zeros(b - a, P, D).index_add(0, tiles - a, w[..., None] * features[ids][:, None, :])
        ab = features.new_zeros(b - a, P).index_add(0, tiles - a, w)
        feat_blocks.append(fb)
        alpha_blocks.append(ab)
        a = b

    def untile(x: Tensor) -> Tensor:
        x = x.view(bins.tiles_y, bins.tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(bins.tiles_y * tile_size, bins.tiles_x * tile_size, -1)[:height, :width]

    return untile(torch.cat(feat_blocks)), untile(torch.cat(alpha_blocks)[..., None])[..., 0]
