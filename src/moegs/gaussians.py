"""Gaussians as a ``ParameterDict`` (every per-Gaussian tensor has the same first dim ``N``).

Densification ops (``moegs.train.ops``) act on every entry of the dict, so any
per-Gaussian state an expert adds (embeddings, motion coefficients, gate
logits) follows clone/split/prune without special code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .cameras import Camera
from .render import Backend, Colors, RenderOutput, join_colors, num_sh_bases, rasterize, rgb_to_sh0

__all__ = ["GaussianSet", "init_splats", "knn", "knn_mean_distance", "concat_sets"]


@dataclass
class GaussianSet:
    """The Gaussians an expert presents to the rasterizer at one time.

    Attributes:
        means: ``[N, 3]``; quats: ``[N, 4]``; log_scales: ``[N, 3]``; opacity_logits: ``[N]``.
        colors: ``[N, K, 3]`` SH coefficients, the same in two parts along the bands (``(sh0 [N, 1, 3],
            shN [N, K - 1, 3])`` as experts store them: rendered without concatenating them), or ``[N, 3]`` RGB.
        sh_degree: SH degree to evaluate (ignored for RGB).
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    colors: Colors
    sh_degree: int = 0

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def is_sh(self) -> bool:
        """Whether ``colors`` holds SH coefficients (else RGB)."""
        return isinstance(self.colors, tuple) or self.colors.dim() == 3

    def colors_tensor(self) -> Tensor:
        """``colors`` as one tensor: ``[N, K, 3]`` (parts concatenated) or ``[N, 3]`` RGB."""
        return join_colors(self.colors)

    def _color_parts(self) -> tuple[Tensor, ...]:
        return self.colors if isinstance(self.colors, tuple) else (self.colors,)

    def detach(self) -> "GaussianSet":
        """The same Gaussians cut from the autograd graph."""
        colors = tuple(c.detach() for c in self.colors) if isinstance(self.colors, tuple) else self.colors.detach()
        return GaussianSet(self.means.detach(), self.quats.detach(), self.log_scales.detach(),
                           self.opacity_logits.detach(), colors, self.sh_degree)

    def nbytes(self) -> int:
        """Bytes held by its tensors."""
        ts = (self.means, self.quats, self.log_scales, self.opacity_logits, *self._color_parts())
        return sum(t.numel() * t.element_size() for t in ts)

    def render(self, camera: Camera, *, extras: Tensor | None = None, background: Tensor | None = None,
               backend: Backend = "auto") -> RenderOutput:
        """Rasterize into ``camera``; ``extras`` ``[N, C]`` are splatted like colour."""
        # all bands, in their parts: the rasterizer reads only those of sh_degree (no sliced copy to back-prop)
        return rasterize(self.means, self.quats, self.log_scales, self.opacity_logits, self.colors, camera,
                         sh_degree=self.sh_degree if self.is_sh else None, extras=extras,
                         background=background, backend=backend)


def concat_sets(sets: list[GaussianSet]) -> GaussianSet:
    """One set holding all of ``sets`` (for rendering several experts in one rasterizer pass).

    Each set keeps the SH bands of its own degree, padded with zero bands to the largest degree (so
    evaluating the largest degree gives every set exactly its own colour); RGB becomes the DC term.
    The coefficients stay in two parts, ``(sh0 [N, 1, 3], shN [N, K - 1, 3])``, each concatenated once
    over the sets (the rasterizer reads them in place), or one ``[N, 1, 3]`` tensor when ``K = 1``.
    """
    k = max(num_sh_bases(s.sh_degree) if s.is_sh else 1 for s in sets)

    def parts(s: GaussianSet) -> tuple[Tensor, Tensor]:
        if not s.is_sh:
            dc = rgb_to_sh0(s.colors)[:, None]
            return dc, dc.new_zeros(dc.shape[0], k - 1, 3)
        c = s._color_parts()
        if len(c) == 2 and c[0].shape[1] == 1:  # (sh0, shN) as experts store them: no copy
            dc, rest = c
        else:
            full = s.colors_tensor()
            dc, rest = full[:, :1], full[:, 1:]
        rest = rest[:, : num_sh_bases(s.sh_degree) - 1]
        if rest.shape[1] < k - 1:
            rest = torch.cat((rest, rest.new_zeros(rest.shape[0], k - 1 - rest.shape[1], 3)), dim=1)
        return dc, rest

    dc, rest = zip(*(parts(s) for s in sets))
    dc = torch.cat(dc)
    return GaussianSet(
        means=torch.cat([s.means for s in sets]),
        quats=torch.cat([s.quats for s in sets]),
        log_scales=torch.cat([s.log_scales for s in sets]),
        opacity_logits=torch.cat([s.opacity_logits for s in sets]),
        colors=(dc, torch.cat(rest)) if k > 1 else dc,
        sh_degree=int(round(k**0.5)) - 1,
    )


@torch.no_grad()
def knn(points: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest other points of each of ``points`` ``[M, 3]`` (exact, chunked ``cdist``).

    Returns:
        indices ``[M, k']`` and squared distances ``[M, k']``, nearest first, ``k' = min(k, M - 1)``.
    """
    M = points.shape[0]
    k = min(k, M - 1)
    idx, d2 = [], []
    for s in range(0, M, chunk):
        d = torch.cdist(points[s : s + chunk], points).square_()
        rows = torch.arange(d.shape[0], device=points.device)
        d[rows, rows + s] = float("inf")
        v, i = d.topk(k, largest=False)
        idx.append(i)
        d2.append(v)
    return torch.cat(idx), torch.cat(d2)


@torch.no_grad()
def knn_mean_distance(points: Tensor, k: int = 3) -> Tensor:
    """``[M]`` mean distance of each point to its ``k`` nearest neighbours (1 for a single point)."""
    if points.shape[0] <= 1:
        return points.new_ones(points.shape[0])
    return knn(points, k)[1].sqrt().mean(-1)


def init_splats(points: Tensor, colors: Tensor, *, sh_degree: int = 3, init_opacity: float = 0.1,
                init_scale: float = 1.0, max_points: int | None = None, generator: torch.Generator | None = None,
                spacing: Tensor | None = None) -> nn.ParameterDict:
    """Gaussians at ``points`` (``[M, 3]``) with colours ``colors`` (``[M, 3]`` in ``[0, 1]``), as 3DGS initialises them.

    Scales are isotropic, ``spacing`` (``[M]``; default: each point's mean distance to its 3 nearest
    neighbours) times ``init_scale``; rotations identity; opacity ``init_opacity``; higher SH bands zero.

    Returns:
        ParameterDict with ``means [N,3]``, ``quats [N,4]``, ``scales [N,3]`` (log), ``opacities [N]``
        (logits), ``sh0 [N,1,3]``, ``shN [N,K-1,3]``.
    """
    if points.shape[0] == 0:
        raise ValueError("cannot initialise Gaussians from an empty point cloud")
    if max_points is not None and points.shape[0] > max_points:
        idx = torch.randperm(points.shape[0], generator=generator)[:max_points]  # cpu: seeded CPU generator
        idx = idx.to(points.device)
        points, colors = points[idx], colors[idx]
        spacing = None if spacing is None else spacing[idx]
    points, colors = points.float(), colors.float()
    N = points.shape[0]
    dist = (knn_mean_distance(points) if spacing is None else spacing.float()).clamp_min(1e-7)
    K = num_sh_bases(sh_degree)
    quats = points.new_zeros(N, 4)
    quats[:, 0] = 1.0
    return nn.ParameterDict({
        "means": nn.Parameter(points.clone()),
        "quats": nn.Parameter(quats),
        "scales": nn.Parameter(torch.log(dist * init_scale)[:, None].repeat(1, 3)),
        "opacities": nn.Parameter(points.new_full((N,), math.log(init_opacity / (1 - init_opacity)))),
        "sh0": nn.Parameter(rgb_to_sh0(colors)[:, None, :]),
        "shN": nn.Parameter(points.new_zeros(N, K - 1, 3)),
    })
