"""Static 3D Gaussian splatting (Kerbl et al., SIGGRAPH 2023): the time-independent core model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..gaussians import GaussianSet, init_splats
from .base import CanonicalConfig, ParamGroup, SceneInit, splat_param_groups

__all__ = ["StaticConfig", "StaticGaussians"]


@dataclass
class StaticConfig:
    """Static 3DGS."""

    name: ClassVar[str] = "static"
    # The canonical Gaussians: SH degree, initial opacity and points, learning rates.
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(max_init_points=100_000))


class StaticGaussians(nn.Module):
    """Plain 3DGS: the same Gaussians at every time."""

    name = "static"

    def __init__(self, init: SceneInit, config: StaticConfig | None = None) -> None:
        super().__init__()
        self.config = config or StaticConfig()
        g = self.config.gaussians
        self.splats = init_splats(init.points, init.colors, sh_degree=g.sh_degree, init_opacity=g.init_opacity,
                                  max_points=g.max_init_points)
        self.extent = float(init.extent)
        self.max_sh_degree = self.config.gaussians.sh_degree
        self.sh_degree = 0

    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        return GaussianSet(s["means"], s["quats"], s["scales"], s["opacities"],
                           (s["sh0"], s["shN"]), self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        return splat_param_groups(self.splats, self.config.gaussians.lr, self.extent)

    def regularization(self, step: int) -> dict[str, Tensor]:
        return {}

    def on_step(self, step: int) -> None:
        return None
