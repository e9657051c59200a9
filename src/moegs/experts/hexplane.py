"""4D Gaussian Splatting with a HexPlane deformation field (Wu et al., CVPR 2024, "4DGaussians").

Canonical 3D Gaussians are deformed at time ``t`` by a spatio-temporal
feature field. The field is a HexPlane (K-planes): for every resolution level
six 2D feature planes over the coordinate pairs ``xy, xz, xt, yz, yt, zt``
are sampled bilinearly at the Gaussian's normalised ``(x, y, z, t)``; the six
samples are multiplied (Hadamard product) and the levels concatenated. A
small MLP turns the feature into a hidden code, and three heads decode the
position offset, the additive quaternion offset and the log-scale offset.

Training follows the paper: a static warm-up renders the canonical Gaussians
(the "coarse" stage), then the deformation is switched on (the "fine"
stage) together with the paper's grid regularisers: total variation of the
spatial planes, second-order smoothness along ``t`` of the time planes, and
an L1 pull of the time planes towards 1 (time planes start at 1, so a
multiplicative fusion starts as a time-independent field).

Differences from the reference code, all deliberate: time is mapped to
``[-1, 1]`` so the time planes' full resolution is used (the code samples
``t in [0, 1]`` and uses half of each time plane); the spatial planes'
smoothness is the K-planes total variation (first differences along both
axes, as the paper describes; the code applies a second difference along
one axis); the last layer of each head starts small (``head_init_std``) so
the dynamic stage begins from the warm-up result instead of a random jump.
Sizes default to a CPU budget (16 features, base resolution 32, two levels;
the paper uses 32 features, base 64 for D-NeRF).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import GaussianSet, init_splats
from .base import ParamGroup, SceneInit
from .base import CanonicalConfig, StepClock, splat_param_groups

__all__ = ["HexPlaneConfig", "HexPlaneField", "HexPlaneGaussians", "plane_tv", "plane_time_smoothness",
           "sample_planes_torch"]

# Coordinate pairs of the six planes, in the order of the reference code:
# (x,y) (x,z) (x,t) (y,z) (y,t) (z,t); coordinate 3 is time.
PLANES: tuple[tuple[int, int], ...] = tuple(itertools.combinations(range(4), 2))
SPACE_PLANES: tuple[int, ...] = tuple(i for i, p in enumerate(PLANES) if 3 not in p)
TIME_PLANES: tuple[int, ...] = tuple(i for i, p in enumerate(PLANES) if 3 in p)


@dataclass
class HexPlaneConfig:
    """4DGaussians (HexPlane deformation field) sized for a CPU by default."""

    name: ClassVar[str] = "hexplane"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates.
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=20_000))
    # Feature channels of every plane (paper: 32).
    feature_dim: int = 16
    # Base plane resolution along x, y, z, t (paper, D-NeRF: 64, 64, 64, 25).
    resolution: tuple[int, ...] = (32, 32, 32, 25)
    # Multipliers of the spatial resolution, one level each; time keeps its resolution (paper: 1, 2).
    multires: tuple[int, ...] = (1, 2)
    # Spatial planes start uniform in [plane_init_low, plane_init_high]; time planes start at 1.
    plane_init_low: float = 0.1
    plane_init_high: float = 0.5
    # Width of the feature MLP and of the heads (paper: 64).
    net_width: int = 64
    # Linear layers of the feature MLP before the heads (paper, D-NeRF: 1).
    net_depth: int = 1
    # Standard deviation of the heads' last-layer weights (0 starts with no deformation at all).
    head_init_std: float = 1e-3
    # Deform the Gaussians' scales (paper: yes).
    deform_scale: bool = True
    # Deform the Gaussians' rotations (paper: yes).
    deform_rotation: bool = True
    # Steps of the static warm-up ("coarse" stage) before the deformation is used (paper: 3000 of 20000).
    warmup_steps: int = 300
    # Learning rate of the planes, times the scene extent, decaying to grid_lr_final (paper: 1.6e-3 -> 1.6e-5).
    grid_lr: float = 1.6e-3
    grid_lr_final: float = 1.6e-5
    # Learning rate of the MLPs, times the scene extent, decaying to net_lr_final (paper: 1.6e-4 -> 1.6e-6).
    net_lr: float = 1.6e-4
    net_lr_final: float = 1.6e-6
    # Weight of the total variation of the spatial planes (paper: 1e-4).
    plane_tv_weight: float = 1e-4
    # Weight of the second-order smoothness along t of the time planes (paper: 1e-2).
    time_smoothness_weight: float = 1e-2
    # Weight of the L1 distance of the time planes to 1 (paper: 1e-4).
    l1_time_planes_weight: float = 1e-4


def plane_tv(plane: Tensor) -> Tensor:
    """Total variation of a ``[1, C, H, W]`` plane: mean squared first differences along H and W (K-planes)."""
    h_tv = (plane[..., 1:, :] - plane[..., :-1, :]).square().mean()
    w_tv = (plane[..., :, 1:] - plane[..., :, :-1]).square().mean()
    return 2.0 * (h_tv + w_tv)


def plane_time_smoothness(plane: Tensor) -> Tensor:
    """Mean squared second difference along H (time, for a time plane) of a ``[1, C, H, W]`` plane."""
    first = plane[..., 1:, :] - plane[..., :-1, :]
    return (first[..., 1:, :] - first[..., :-1, :]).square().mean()


def sample_planes_torch(
    coords: Tensor,  # [N, D]
    planes: Sequence[Tensor],  # K x [1, C, H_k, W_k]
    axes: Sequence[tuple[int, int]],  # K x (column along W_k, column along H_k)
) -> Tensor:
    """Product over the planes of their bilinear samples (``grid_sample``, border padding,
    ``align_corners=True``): the reference of ``_hexplane_cpu.sample_planes_cpu``, same signature.

    Returns ``[N, C]``: ``prod_k planes[k]`` sampled at ``(coords[:, axes[k][0]], coords[:, axes[k][1]])``.
    """
    f = 1.0
    for (i, j), plane in zip(axes, planes, strict=True):
        grid = coords[:, (i, j)].view(1, 1, -1, 2)  # [1, 1, N, 2]
        s = F.grid_sample(plane, grid, mode="bilinear", padding_mode="border", align_corners=True)
        f = f * s[0, :, 0].t()  # [N, C]
    return f


class HexPlaneField(nn.Module):
    """Multi-resolution HexPlane: ``[N, 4]`` coordinates in ``[-1, 1]`` -> ``[N, feature_dim * levels]`` features.

    Level ``l`` holds six planes; plane ``(i, j)`` has shape ``[1, C, R_j, R_i]``
    (``grid_sample`` reads ``x`` along the last axis), so the time axis of a time plane is dim 2.
    """

    def __init__(self, feature_dim: int, resolution: tuple[int, ...], multires: tuple[int, ...],
                 init_low: float, init_high: float) -> None:
        super().__init__()
        if len(resolution) != 4:
            raise ValueError(f"resolution must give x, y, z, t, got {resolution}")
        self.levels = nn.ModuleList()
        for m in multires:
            reso = [r * m for r in resolution[:3]] + [resolution[3]]
            planes = nn.ParameterList()
            for i, j in PLANES:
                p = torch.empty(1, feature_dim, reso[j], reso[i])  # cpu: built with the module, moved by .to(device)
                if j == 3:
                    nn.init.ones_(p)
                else:
                    nn.init.uniform_(p, init_low, init_high)
                planes.append(nn.Parameter(p))
            self.levels.append(planes)
        self.out_dim = feature_dim * len(multires)

    def forward(self, coords: Tensor, backend: Literal["auto", "cpu", "torch"] = "auto") -> Tensor:
        """Features of ``coords`` ``[N, 4]`` (normalised x, y, z, t); returns ``[N, out_dim]``.

        ``backend``: ``"cpu"`` the fused native sampler (``_hexplane_cpu``), ``"torch"`` the
        ``grid_sample`` reference, ``"auto"`` the native one for float32/float64 CPU tensors when it builds.
        """
        from . import _hexplane_cpu

        native = _hexplane_cpu.HEXPLANE.chooses(backend, coords, "sampling with grid_sample")
        sample = _hexplane_cpu.sample_planes_cpu if native else sample_planes_torch
        return torch.cat([sample(coords, planes, PLANES) for planes in self.levels], dim=-1)


def _head(width: int, out: int, init_std: float) -> nn.Sequential:
    net = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))
    nn.init.normal_(net[-1].weight, std=init_std)
    nn.init.zeros_(net[-1].bias)
    return net


class HexPlaneGaussians(nn.Module):
    """Canonical Gaussians deformed by a HexPlane field and MLP heads (4DGaussians).

    Buffers: ``aabb`` ``[2, 3]`` (min, max of the initial points; positions are
    normalised by it); ``clock.step`` (the last training step, which ends the warm-up).
    """

    name = "hexplane"

    def __init__(self, init: SceneInit, config: HexPlaneConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or HexPlaneConfig()
        self.splats = init_splats(init.points, init.colors, sh_degree=cfg.gaussians.sh_degree, init_opacity=cfg.gaussians.init_opacity,
                                  max_points=cfg.gaussians.max_init_points)
        self.extent = float(init.extent)
        self.max_sh_degree = cfg.gaussians.sh_degree
        self.sh_degree = 0
        means = self.splats["means"].detach()
        lo, hi = means.min(0).values, means.max(0).values
        pad = 1e-3 * (hi - lo).max().clamp_min(1e-6)  # a flat point cloud still gets a valid box
        self.register_buffer("aabb", torch.stack((lo - pad, hi + pad)))
        self.clock = StepClock()
        self.field = HexPlaneField(cfg.feature_dim, tuple(cfg.resolution), tuple(cfg.multires),
                                   cfg.plane_init_low, cfg.plane_init_high)
        layers: list[nn.Module] = [nn.Linear(self.field.out_dim, cfg.net_width)]
        for _ in range(cfg.net_depth - 1):
            layers += [nn.ReLU(), nn.Linear(cfg.net_width, cfg.net_width)]
        self.feature_net = nn.Sequential(*layers)
        self.pos_head = _head(cfg.net_width, 3, cfg.head_init_std)
        self.scale_head = _head(cfg.net_width, 3, cfg.head_init_std) if cfg.deform_scale else None
        self.rot_head = _head(cfg.net_width, 4, cfg.head_init_std) if cfg.deform_rotation else None

    # ------------------------------------------------------------ deformation
    def normalized_coords(self, means: Tensor, t: float) -> Tensor:
        """``[N, 4]``: ``means`` ``[N, 3]`` mapped by ``aabb`` to ``[-1, 1]`` and ``t`` in ``[0, 1]`` to ``[-1, 1]``."""
        lo, hi = self.aabb[0], self.aabb[1]
        xyz = (means - lo) * (2.0 / (hi - lo)) - 1.0
        return torch.cat((xyz, xyz.new_full((xyz.shape[0], 1), 2.0 * float(t) - 1.0)), dim=-1)

    def deltas(self, t: float) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Offsets at ``t``: position ``[N, 3]``, quaternion ``[N, 4]`` and log-scale ``[N, 3]`` (None if off)."""
        h = self.feature_net(self.field(self.normalized_coords(self.splats["means"], t)))
        d_rot = self.rot_head(h) if self.rot_head is not None else None
        d_scale = self.scale_head(h) if self.scale_head is not None else None
        return self.pos_head(h), d_rot, d_scale

    def gaussians_at(self, t: float) -> GaussianSet:
        """The Gaussians at ``t``: canonical during the warm-up, deformed afterwards."""
        s = self.splats
        means, quats, scales = s["means"], s["quats"], s["scales"]
        if self.deforming:
            d_pos, d_rot, d_scale = self.deltas(t)
            means = means + d_pos
            if d_rot is not None:
                quats = quats + d_rot
            if d_scale is not None:
                scales = scales + d_scale
        return GaussianSet(means, quats, scales, s["opacities"], (s["sh0"], s["shN"]),
                           self.sh_degree)

    # ------------------------------------------------------------- training
    def param_groups(self) -> dict[str, ParamGroup]:
        cfg, e = self.config, self.extent
        nets = [p for n, p in self.named_parameters() if not n.startswith(("splats.", "field."))]
        groups = splat_param_groups(self.splats, cfg.gaussians.lr, e)
        groups["hexplane_grid"] = ParamGroup(list(self.field.parameters()), cfg.grid_lr * e, cfg.grid_lr_final * e,
                                             delay_steps=cfg.warmup_steps)
        groups["hexplane_mlp"] = ParamGroup(nets, cfg.net_lr * e, cfg.net_lr_final * e, delay_steps=cfg.warmup_steps)
        return groups

    def regularization(self, step: int) -> dict[str, Tensor]:
        """The paper's grid losses (weighted), in the dynamic stage only."""
        if not self.deforming:
            return {}
        cfg = self.config
        tv = tsmooth = l1 = 0.0
        for planes in self.field.levels:
            tv = tv + sum(plane_tv(planes[i]) for i in SPACE_PLANES)
            tsmooth = tsmooth + sum(plane_time_smoothness(planes[i]) for i in TIME_PLANES)
            l1 = l1 + sum((1.0 - planes[i]).abs().mean() for i in TIME_PLANES)
        out = {}
        if cfg.plane_tv_weight > 0:
            out["plane_tv"] = cfg.plane_tv_weight * tv
        if cfg.time_smoothness_weight > 0:
            out["time_smoothness"] = cfg.time_smoothness_weight * tsmooth
        if cfg.l1_time_planes_weight > 0:
            out["l1_time_planes"] = cfg.l1_time_planes_weight * l1
        return out

    @property
    def deforming(self) -> bool:
        """Whether the deformation is applied (after the static warm-up of ``warmup_steps`` steps)."""
        return self.clock.reached(self.config.warmup_steps)

    def on_step(self, step: int) -> None:
        self.clock.set(step)

