"""Static 3D Gaussian splatting (Kerbl et al., SIGGRAPH 2023): the time-independent core model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..gaussians import GaussianSet, init_splats
from .base import ParamGroup, SceneInit

__all__ = ["GaussianLR", "StaticConfig", "StaticGaussians", "splat_param_groups"]


@dataclass
class GaussianLR:
    """Learning rates of the canonical Gaussian parameters (3DGS's defaults).

    ``means`` is scaled by the scene extent and decays to ``means_final``.
    """

    means: float = 1.6e-4
    means_final: float = 1.6e-6
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20


def splat_param_groups(splats: nn.ParameterDict, lr: GaussianLR, extent: float) -> dict[str, ParamGroup]:
    """One group per canonical Gaussian parameter, keyed like ``splats``."""
    return {
        "means": ParamGroup([splats["means"]], lr.means * extent, lr.means_final * extent),
        "scales": ParamGroup([splats["scales"]], lr.scales),
        "quats": ParamGroup([splats["quats"]], lr.quats),
        "opacities": ParamGroup([splats["opacities"]], lr.opacities),
        "sh0": ParamGroup([splats["sh0"]], lr.sh0),
        "shN": ParamGroup([splats["shN"]], lr.shN),
    }


@dataclass
class StaticConfig:
    """Static 3DGS."""

    # Highest SH degree (0-3).
    sh_degree: int = 3
    # Opacity of the initial Gaussians.
    init_opacity: float = 0.1
    # Subsample the initial point cloud to at most this many points.
    max_init_points: int = 100_000
    # Learning rates of the Gaussian parameters.
    lr: GaussianLR = field(default_factory=GaussianLR)


class StaticGaussians(nn.Module):
    """Plain 3DGS: the same Gaussians at every time."""

    name = "static"

    def __init__(self, init: SceneInit, config: StaticConfig | None = None) -> None:
        super().__init__()
        self.config = config or StaticConfig()
        self.splats = init_splats(init.points, init.colors, sh_degree=self.config.sh_degree,
                                  init_opacity=self.config.init_opacity, max_points=self.config.max_init_points)
        self.extent = float(init.extent)
        self.max_sh_degree = self.config.sh_degree
        self.sh_degree = 0

    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        return GaussianSet(s["means"], s["quats"], s["scales"], s["opacities"],
                           torch.cat((s["sh0"], s["shN"]), dim=1), self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        return splat_param_groups(self.splats, self.config.lr, self.extent)

    def regularization(self, step: int) -> dict[str, Tensor]:
        return {}

    def on_step(self, step: int) -> None:
        return None
