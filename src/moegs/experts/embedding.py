"""Per-Gaussian embedding-based deformation (Bae et al., ECCV 2024, "E-D3DGS").

Every Gaussian carries a learnable embedding ``z_g`` (kept in ``splats``, so
it is cloned, split and pruned with its Gaussian). Time is represented by a
table of temporal embeddings, one per training frame time, interpolated
linearly for times in between. Two decoders map the pair ``(z_t, z_g)`` to
offsets of position, rotation (additive quaternion offset) and log-scale,
optionally also opacity and SH colour:

- the *coarse* decoder reads a coarse temporal embedding ``z_t^c``: the frame
  table resampled (linearly) to ``coarse_embeddings`` control times, so it
  only sees slow motion;
- the *fine* decoder reads the fine embedding ``z_t^f``, whose number of
  control times grows linearly from ``coarse_embeddings`` to one per frame over
  ``c2f_steps`` (the paper's coarse-to-fine temporal embedding).

The two decoders' offsets are summed. Losses of the paper's code: a local
smoothness of the Gaussian embeddings (each Gaussian's embedding is pulled
towards those of its ``knn`` nearest neighbours with weights
``exp(-knn_weight_sharpness * d^2)``, Dynamic 3D Gaussians' weighted L2), a
second-order smoothness of the temporal table along time, and an L1 pull of
the opacities down (used by the paper in place of opacity resets).

Defaults follow the paper's monocular configuration (deformed position,
rotation and scale; zero-initialised embeddings; no annealing), scaled down
for a CPU: temporal embeddings of 64 channels (paper: 256), decoders 64 wide
(paper: 128). The neighbour distance ``d`` is measured in units of the scene
extent so that one sharpness works for any scene scale (the code applies
2000 to raw coordinates). Per-camera time offsets of the multi-view code
are not modelled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..gaussians import GaussianSet, init_splats, knn
from ..render import num_sh_bases
from . import _smoothness_cpu
from .base import ParamGroup, SceneInit
from .base import CanonicalConfig, StepClock, splat_param_groups

__all__ = ["Decoder", "EmbeddingConfig", "EmbeddingGaussians", "interp1d", "knn_smoothness", "neighbour_scatter"]


@dataclass
class EmbeddingConfig:
    """E-D3DGS sized for a CPU by default."""

    name: ClassVar[str] = "embedding"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates.
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=20_000))
    # Channels of the per-Gaussian embedding (paper: 32).
    gaussian_embedding_dim: int = 32
    # Channels of the temporal embeddings (paper: 256).
    temporal_embedding_dim: int = 64
    # Control times of the coarse temporal embedding (paper: 30, capped at the number of frames).
    coarse_embeddings: int = 30
    # Steps over which the fine temporal embedding grows from coarse_embeddings to one per frame (0: per frame at once).
    c2f_steps: int = 1000
    # Standard deviation of the initial temporal embeddings (paper's monocular setting: 0).
    temporal_init_std: float = 0.0
    # Width of the decoders (paper: 128).
    net_width: int = 64
    # Linear layers of each decoder before its heads (paper's monocular setting: 1).
    net_depth: int = 1
    # Which Gaussian attributes are deformed (paper's monocular setting: position, rotation, scale).
    deform_scale: bool = True
    deform_rotation: bool = True
    deform_opacity: bool = False
    deform_color: bool = False
    # Offsets are scaled by min(1, step / anneal_steps) (paper: 1000 for multi-view, off for monocular; 0 disables).
    anneal_steps: int = 0
    # Learning rate of the Gaussian embeddings (paper: 2.5e-3).
    embedding_lr: float = 2.5e-3
    # Learning rate of the decoders and temporal table, times the scene extent, decaying to net_lr_final.
    net_lr: float = 1.6e-4
    net_lr_final: float = 1.6e-5
    # Weight of the embedding smoothness over spatial neighbours (paper: 1).
    embedding_reg_weight: float = 1.0
    # Neighbours per Gaussian in the embedding smoothness (paper: 20).
    knn: int = 20
    # Neighbour weights exp(-s * (d / extent)^2).
    knn_weight_sharpness: float = 2000.0
    # Weight of the second-order smoothness of the temporal table along time (paper's monocular setting: 1e-4).
    temporal_smoothness_weight: float = 1e-4
    # Weight of the mean opacity (paper: 1e-4).
    opacity_l1_weight: float = 1e-4


def interp1d(x: Tensor, values: Tensor, q: Tensor) -> Tensor:
    """Piecewise-linear interpolation, constant beyond the ends.

    Args:
        x: ``[K]`` sorted knot positions; values: ``[K, D]``; q: ``[M]`` query positions.
    Returns:
        ``[M, D]``.
    """
    if x.shape[0] == 1:
        return values.expand(q.shape[0], -1)
    i = torch.searchsorted(x, q.contiguous()).clamp(1, x.shape[0] - 1)
    x0, x1 = x[i - 1], x[i]
    w = ((q - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)[:, None]
    return values[i - 1] * (1.0 - w) + values[i] * w


def neighbour_scatter(idx: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``[n, M * k]`` sparse CSR matrix of ones that sums a per-pair ``[M * k, D]`` tensor onto the
    neighbours ``idx`` ``[M, k]`` (its row ``j`` adds, in pair order, the pairs whose neighbour is ``j``)."""
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n)
    crow = torch.cat((counts.new_zeros(1), counts.cumsum(0)))
    with warnings.catch_warnings():  # sparse CSR is flagged as beta; only its matmul is used
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, order, torch.ones(flat.shape[0], dtype=dtype, device=idx.device),
                                       (n, flat.shape[0]), check_invariants=False)


class _KnnSmoothness(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb, idx, w, scatter):
        diff = emb.index_select(0, idx.flatten()).view(*idx.shape, -1).sub_(emb[:, None])  # [N, k, D]: e_j - e_i
        s = torch.linalg.vecdot(diff, diff).mul_(w).add_(1e-20).sqrt_()  # [N, k]
        ctx.save_for_backward(diff, s, w)
        ctx.scatter = scatter
        return s.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        diff, s, w = ctx.saved_tensors
        # d s_ij / d e_j = w_ij (e_j - e_i) / s_ij = -d s_ij / d e_i; written per pair, so identical
        # embeddings (clones) get exactly zero, as in the autograd formulation.
        pair = diff * (w / s).mul_(grad / s.numel())[..., None]  # [N, k, D]
        return ctx.scatter @ pair.view(-1, pair.shape[-1]) - pair.sum(1), None, None, None


def knn_smoothness(
    emb: Tensor,  # [N, D]
    idx: Tensor,  # [N, k]
    w: Tensor,  # [N, k]
    scatter: Tensor,  # [N, N * k] sparse CSR
    backend: str = "auto",
) -> Tensor:
    """``mean_ij sqrt(w_ij |emb[idx_ij] - emb_i|^2 + 1e-20)``: the weighted L2 embedding smoothness.

    ``backend="torch"`` (the reference) equals the autograd formulation with an ``[N, k, D]`` neighbour
    gather, with a hand-written backward that sums the neighbours' gradients with ``scatter``
    (:func:`neighbour_scatter` of ``idx``, in ``w``'s dtype) instead of autograd's index-add, and fewer
    ``[N, k, D]`` temporaries. ``"cpu"`` is the compiled op (:mod:`moegs.experts._smoothness_cpu`: no
    ``[N, k, D]`` tensor at all); ``"auto"`` takes it for float32/float64 CPU tensors when it builds.

    Args:
        emb: ``[N, D]`` embeddings (differentiable); idx: ``[N, k]`` neighbour indices; w: ``[N, k]``
            weights (not differentiated).

    Returns:
        A scalar.
    """
    if _smoothness_cpu.SMOOTHNESS.chooses(backend, emb, "the embedding smoothness runs with torch ops"):
        return _smoothness_cpu.smoothness_cpu(emb, idx, w, scatter)
    return _KnnSmoothness.apply(emb, idx, w, scatter)


class Decoder(nn.Module):
    """``(z_t [Dt], z_g [N, Dg]) -> hidden [N, W]`` then one head per deformed attribute.

    The first layer is split so that the temporal part, shared by all Gaussians, is computed once.
    """

    def __init__(self, dt: int, dg: int, width: int, depth: int, outputs: dict[str, int]) -> None:
        super().__init__()
        self.dt = dt
        self.first = nn.Linear(dt + dg, width)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.ReLU(), nn.Linear(width, width)]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            k: nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d))
            for k, d in outputs.items()
        })

    def forward(self, z_t: Tensor, z_g: Tensor) -> dict[str, Tensor]:
        """``z_t`` ``[Dt]``, ``z_g`` ``[N, Dg]`` -> ``{attribute: [N, D_attr]}``."""
        w, b = self.first.weight, self.first.bias
        h = F.linear(z_g, w[:, self.dt :], w[:, : self.dt] @ z_t + b)
        a = F.relu(self.trunk(h), inplace=True)  # the first ReLU of every head, computed once
        return {k: head[1:](a) for k, head in self.heads.items()}


class EmbeddingGaussians(nn.Module):
    """Canonical Gaussians deformed by coarse + fine decoders of (temporal, per-Gaussian) embeddings.

    ``splats["embedding"]`` ``[N, Dg]``; ``temporal`` ``[T, Dt]`` one row per frame time;
    buffers ``frame_times`` ``[T]``, ``fine_count`` (control times of the fine embedding) and
    ``clock.step`` (the last training step; offsets are scaled by its ramp over ``anneal_steps``).
    """

    name = "embedding"

    def __init__(self, init: SceneInit, config: EmbeddingConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or EmbeddingConfig()
        self.splats = init_splats(init.points, init.colors, sh_degree=cfg.gaussians.sh_degree, init_opacity=cfg.gaussians.init_opacity,
                                  max_points=cfg.gaussians.max_init_points)
        n = self.splats["means"].shape[0]
        self.splats["embedding"] = nn.Parameter(self.splats["means"].new_zeros(n, cfg.gaussian_embedding_dim))
        self.extent = float(init.extent)
        self.max_sh_degree = cfg.gaussians.sh_degree
        self.sh_degree = 0
        times = torch.unique(init.times.float()) if init.times.numel() else init.times.new_zeros(1)
        self.register_buffer("frame_times", times)
        self.temporal = nn.Parameter(torch.randn(len(times), cfg.temporal_embedding_dim, device=times.device) * cfg.temporal_init_std)
        self.num_coarse = max(1, min(cfg.coarse_embeddings, len(times)))
        self.register_buffer("fine_count", torch.tensor(self.num_coarse if cfg.c2f_steps > 0 else len(times), device=times.device))
        self.clock = StepClock()
        outputs = {"means": 3}
        if cfg.deform_rotation:
            outputs["quats"] = 4
        if cfg.deform_scale:
            outputs["scales"] = 3
        if cfg.deform_opacity:
            outputs["opacities"] = 1
        if cfg.deform_color:
            outputs["colors"] = 3 * num_sh_bases(cfg.gaussians.sh_degree)
        args = (cfg.temporal_embedding_dim, cfg.gaussian_embedding_dim, cfg.net_width, cfg.net_depth, outputs)
        self.coarse = Decoder(*args)
        self.fine = Decoder(*args)
        self._knn_cache: tuple[int, Tensor, Tensor, Tensor] | None = None

    # ------------------------------------------------------------ embeddings
    def temporal_embedding(self, t: float, count: int) -> Tensor:
        """``[Dt]``: the frame table resampled to ``count`` evenly spaced control times, read at ``t``.

        With ``count`` at least the number of frames, the table itself is interpolated at its frame times.
        """
        q = self.frame_times.new_tensor([float(t)])
        if count >= len(self.frame_times):
            return interp1d(self.frame_times, self.temporal, q)[0]
        ctrl = torch.linspace(float(self.frame_times[0]), float(self.frame_times[-1]), count,
                              device=self.frame_times.device)
        return interp1d(ctrl, interp1d(self.frame_times, self.temporal, ctrl), q)[0]

    def deltas(self, t: float) -> dict[str, Tensor]:
        """Summed coarse + fine offsets at ``t``, each ``[N, D_attr]``, scaled by the annealing ramp."""
        z_g = self.splats["embedding"]
        dc = self.coarse(self.temporal_embedding(t, self.num_coarse), z_g)
        df = self.fine(self.temporal_embedding(t, int(self.fine_count)), z_g)
        anneal = self.clock.ramp(self.config.anneal_steps)
        return {k: dc[k].add_(df[k]).mul_(anneal) for k in dc}

    def gaussians_at(self, t: float) -> GaussianSet:
        """The canonical Gaussians plus the decoders' offsets at ``t``."""
        s = self.splats
        d = self.deltas(t)
        quats = s["quats"] + d["quats"] if "quats" in d else s["quats"]
        scales = s["scales"] + d["scales"] if "scales" in d else s["scales"]
        opacities = s["opacities"] + d["opacities"][:, 0] if "opacities" in d else s["opacities"]
        colors = (s["sh0"], s["shN"])
        if "colors" in d:  # an offset of every coefficient: one tensor
            full = torch.cat(colors, dim=1)
            colors = full + d["colors"].view(full.shape)
        return GaussianSet(s["means"] + d["means"], quats, scales, opacities, colors, self.sh_degree)

    # ------------------------------------------------------------- training
    def param_groups(self) -> dict[str, ParamGroup]:
        cfg, e = self.config, self.extent
        groups = splat_param_groups(self.splats, cfg.gaussians.lr, e)
        groups["embedding"] = ParamGroup([self.splats["embedding"]], cfg.embedding_lr)
        nets = [p for n, p in self.named_parameters() if not n.startswith("splats.")]
        groups["embedding_deformation"] = ParamGroup(nets, cfg.net_lr * e, cfg.net_lr_final * e)
        return groups

    def _neighbours(self) -> tuple[Tensor, Tensor, Tensor]:
        """kNN of the canonical means (``[N, k]`` indices and weights, and their :func:`neighbour_scatter`),
        recomputed when ``N`` changes."""
        means = self.splats["means"].detach()
        n = means.shape[0]
        if self._knn_cache is None or self._knn_cache[0] != n or self._knn_cache[1].device != means.device:
            idx, d2 = knn(means, self.config.knn)
            w = torch.exp(-self.config.knn_weight_sharpness * d2 / self.extent**2)
            self._knn_cache = (n, idx, w, neighbour_scatter(idx, n, w.dtype))
        return self._knn_cache[1:]

    def regularization(self, step: int) -> dict[str, Tensor]:
        """Embedding smoothness over neighbours, temporal-table smoothness and mean opacity (weighted)."""
        cfg, out = self.config, {}
        emb = self.splats["embedding"]
        if cfg.embedding_reg_weight > 0 and emb.shape[0] > 1:
            out["embedding_smoothness"] = cfg.embedding_reg_weight * knn_smoothness(emb, *self._neighbours())
        if cfg.temporal_smoothness_weight > 0 and self.temporal.shape[0] > 2:
            first = self.temporal[1:] - self.temporal[:-1]
            out["temporal_smoothness"] = cfg.temporal_smoothness_weight * (first[1:] - first[:-1]).square().mean()
        if cfg.opacity_l1_weight > 0:
            out["opacity_l1"] = cfg.opacity_l1_weight * torch.sigmoid(self.splats["opacities"]).mean()
        return out

    def on_step(self, step: int) -> None:
        """Grow the fine temporal embedding (coarse-to-fine) and ramp the offsets (annealing)."""
        cfg, total = self.config, len(self.frame_times)
        if cfg.c2f_steps > 0:
            frac = min(step, cfg.c2f_steps) / cfg.c2f_steps
            self.fine_count.fill_(int(self.num_coarse + (total - self.num_coarse) * frac))
        self.clock.set(step)
