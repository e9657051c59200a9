"""Deformable 3D Gaussians (Yang et al., CVPR 2024): canonical Gaussians warped by an MLP of (position, time).

A deformation field ``D(γ(sg(x)), γ(t)) -> (δx, δq, δs)`` moves every canonical
Gaussian to time ``t``: ``x_t = x + δx``, ``q_t = normalize(q) + δq`` (the
rasterizer normalises again), ``s_t = s + δs``. ``γ`` is NeRF's positional
encoding (input plus ``sin``/``cos`` at ``2^0 .. 2^(L-1)``), ``sg`` a stop-gradient
on the canonical position (the paper feeds ``x.detach()`` to the network). The
network is an MLP with a skip connection that re-injects the encoded inputs
after layer ``depth // 2``; for D-NeRF-like (synthetic) data the paper first
maps ``γ(t)`` through a small "time net" (``γ(t) -> 256 -> 30``), which
``time_net_width > 0`` enables. The first ``warmup_steps`` train the canonical
Gaussians alone (the paper: 3k iterations) and the annealed smoothing of time
(AST, for real captures) adds ``N(0, 1) * Δt * β(step)`` to the time input,
``β`` decaying linearly from ``ast_scale`` to 0 over ``ast_steps``.

The loss is the photometric one only (L1 + D-SSIM, the trainer's), so
:meth:`DeformableGaussians.regularization` is empty.

Two documented deviations: ``δs`` is added to the *log* scale (a multiplicative
update, so scales stay positive; the paper adds it to the activated scale),
and the three output heads start at zero so switching the field on after the
warm-up leaves the canonical fit untouched (the paper uses PyTorch's default
initialisation).

Defaults are sized for a CPU (4 x 64 MLP, 64-wide time net, 500 warm-up
steps, 10k initial points); :meth:`DeformableConfig.paper` gives the
published values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoding import fourier_features
from ..gaussians import GaussianSet, init_splats
from .base import ParamGroup, SceneInit
from .base import CanonicalConfig, StepClock, splat_param_groups

__all__ = ["DeformableConfig", "DeformableGaussians", "DeformationField"]


@dataclass
class DeformableConfig:
    """Deformable 3DGS. Defaults are scaled down for a CPU; ``DeformableConfig.paper()`` is the published setup."""

    name: ClassVar[str] = "deformable"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates (paper: 100k random initial points on D-NeRF).
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=10_000))
    # Hidden layers of the deformation MLP (paper: 8).
    net_depth: int = 4
    # Width of the deformation MLP (paper: 256).
    net_width: int = 64
    # Frequencies of the positional encoding of x (paper: 10).
    pos_freqs: int = 10
    # Frequencies of the positional encoding of t (paper: 6 on synthetic data, 10 on real captures).
    time_freqs: int = 6
    # Hidden width of the time net γ(t) -> width -> time_net_out (paper: 256 on synthetic data; 0 feeds γ(t) directly).
    time_net_width: int = 64
    # Output size of the time net (paper: 30).
    time_net_out: int = 30
    # Steps that train the canonical Gaussians without deformation (paper: 3000).
    warmup_steps: int = 500
    # Annealed smoothing of time (paper: on for real captures, off for synthetic scenes).
    ast: bool = False
    # AST noise scale at step 0, in units of the frame interval (paper: 0.1).
    ast_scale: float = 0.1
    # Steps over which the AST noise decays to zero (paper: 20k).
    ast_steps: int = 20_000
    # Learning rate of the deformation field, decaying log-linearly to deform_lr_final (paper: 8e-4 -> 1.6e-6).
    deform_lr: float = 8e-4
    deform_lr_final: float = 1.6e-6

    @classmethod
    def paper(cls) -> "DeformableConfig":
        """The published D-NeRF setup (8 x 256 MLP, 3k warm-up steps, 100k initial points)."""
        return cls(gaussians=CanonicalConfig(max_init_points=100_000), net_depth=8, net_width=256, time_net_width=256, warmup_steps=3000)


class DeformationField(nn.Module):
    """The MLP ``(γ(x), γ(t)) -> (δx [N,3], δq [N,4], δs [N,3])`` with one skip connection."""

    def __init__(self, config: DeformableConfig) -> None:
        super().__init__()
        c = config
        if c.net_depth < 1:
            raise ValueError(f"net_depth must be >= 1, got {c.net_depth}")
        self.pos_freqs, self.time_freqs = c.pos_freqs, c.time_freqs
        x_ch = 3 * (1 + 2 * c.pos_freqs)
        t_ch = 1 + 2 * c.time_freqs
        if c.time_net_width > 0:
            self.time_net = nn.Sequential(nn.Linear(t_ch, c.time_net_width), nn.ReLU(),
                                          nn.Linear(c.time_net_width, c.time_net_out))
            t_ch = c.time_net_out
        else:
            self.time_net = None
        in_ch = x_ch + t_ch
        self.skip = c.net_depth // 2
        W = c.net_width
        self.layers = nn.ModuleList(
            [nn.Linear(in_ch, W)] + [nn.Linear(W + (in_ch if i == self.skip else 0), W) for i in range(1, c.net_depth)]
        )
        self.warp = nn.Linear(W, 3)
        self.rotation = nn.Linear(W, 4)
        self.scaling = nn.Linear(W, 3)
        for head in (self.warp, self.rotation, self.scaling):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Offsets of Gaussians at ``x`` (``[N, 3]``) at time ``t`` (``[1]`` or ``[N, 1]``).

        Returns:
            ``(δx [N, 3], δq [N, 4], δs [N, 3])``.
        """
        x_emb = fourier_features(x, self.pos_freqs)  # [N, 3(1+2L)]
        t_emb = fourier_features(t.reshape(-1, 1), self.time_freqs)  # [1 or N, 1+2Lt]
        if self.time_net is not None:
            t_emb = self.time_net(t_emb)
        h = None
        for i, layer in enumerate(self.layers):
            h = F.relu(self._input_layer(layer, x_emb, t_emb, h) if i in (0, self.skip) else layer(h), inplace=True)
        return self.warp(h), self.rotation(h), self.scaling(h)

    @staticmethod
    def _input_layer(layer: nn.Linear, x_emb: Tensor, t_emb: Tensor, h: Tensor | None) -> Tensor:
        """``layer(cat(x_emb, t_emb, h))`` (``h`` omitted when ``None``) without building the concatenation:
        one product per part, the time part (``[1, C]`` when shared by all Gaussians) folded into the bias."""
        w, xc, tc = layer.weight, x_emb.shape[1], t_emb.shape[1]
        t_part = F.linear(t_emb, w[:, xc : xc + tc], layer.bias)  # [1 or N, W]
        out = torch.addmm(t_part, x_emb, w[:, :xc].t())
        return out if h is None else out.addmm_(h, w[:, xc + tc :].t())


class DeformableGaussians(nn.Module):
    """Canonical 3D Gaussians plus a deformation field (Deformable-3DGS)."""

    name = "deformable"

    def __init__(self, init: SceneInit, config: DeformableConfig | None = None) -> None:
        super().__init__()
        self.config = config or DeformableConfig()
        c = self.config
        self.splats = init_splats(init.points, init.colors, sh_degree=c.gaussians.sh_degree, init_opacity=c.gaussians.init_opacity,
                                  max_points=c.gaussians.max_init_points)
        self.deform = DeformationField(c)
        self.extent = float(init.extent)
        self.frame_interval = 1.0 / max(1, len(init.times))
        self.max_sh_degree = c.gaussians.sh_degree
        self.sh_degree = 0
        self.clock = StepClock()  # the training step last seen by on_step (warm-up, AST decay)

    @property
    def deforming(self) -> bool:
        """Whether the deformation field is applied (after the warm-up)."""
        return self.clock.reached(self.config.warmup_steps)

    def offsets(self, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(δx [N, 3], δq [N, 4], δs [N, 3])`` at time ``t`` (with AST noise while training)."""
        means = self.splats["means"]
        tt = means.new_tensor([float(t)])
        if self.config.ast and self.training:
            beta = self.config.ast_scale * (1.0 - self.clock.ramp(max(1, self.config.ast_steps)))
            tt = tt + torch.randn_like(tt) * self.frame_interval * beta
        return self.deform(means.detach(), tt)

    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        means, quats, scales = s["means"], s["quats"], s["scales"]
        if self.deforming:
            dx, dq, ds = self.offsets(t)
            means = means + dx
            quats = F.normalize(quats, dim=-1) + dq
            scales = scales + ds
        return GaussianSet(means, quats, scales, s["opacities"], (s["sh0"], s["shN"]),
                           self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        c = self.config
        groups = splat_param_groups(self.splats, c.gaussians.lr, self.extent)
        groups["deform"] = ParamGroup(list(self.deform.parameters()), c.deform_lr, c.deform_lr_final,
                                      delay_steps=c.warmup_steps)
        return groups

    def regularization(self, step: int) -> dict[str, Tensor]:
        return {}

    def on_step(self, step: int) -> None:
        self.clock.set(step)
