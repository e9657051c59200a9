"""Dynamic Gaussian experts, each usable alone and as one expert of a mixture.

:data:`EXPERTS` is the explicit registry ``name -> (ConfigClass, ModelClass)``;
a model is built as ``ModelClass(SceneInit, ConfigClass(...))``.
"""

from __future__ import annotations

from typing import Union

from .base import CanonicalConfig, Expert, GaussianLR, ParamGroup, SceneInit, StepClock, render_expert, splat_param_groups
from .deformable import DeformableConfig, DeformableGaussians
from .embedding import EmbeddingConfig, EmbeddingGaussians
from .hexplane import HexPlaneConfig, HexPlaneGaussians
from .keyframe import KeyframeConfig, KeyframeGaussians
from .spacetime import SpacetimeConfig, SpacetimeGaussians
from .static import StaticConfig, StaticGaussians

__all__ = ["EXPERTS", "CanonicalConfig", "Expert", "ExpertConfig", "GaussianLR", "ParamGroup", "SceneInit", "build_expert",
           "expert_config", "render_expert", "splat_param_groups", "StepClock"]

EXPERTS: dict[str, tuple[type, type]] = {
    "static": (StaticConfig, StaticGaussians),
    "deformable": (DeformableConfig, DeformableGaussians),
    "spacetime": (SpacetimeConfig, SpacetimeGaussians),
    "keyframe": (KeyframeConfig, KeyframeGaussians),
    "hexplane": (HexPlaneConfig, HexPlaneGaussians),
    "embedding": (EmbeddingConfig, EmbeddingGaussians),
}
for _name, (_cfg, _model) in EXPERTS.items():
    if not _cfg.name == _model.name == _name:
        raise TypeError(f"expert registry: {_name!r} maps to config {_cfg.name!r} and model {_model.name!r}")

#: Any registered expert's config (the type of ``TrainConfig.expert``).
ExpertConfig = Union[tuple(cfg for cfg, _ in EXPERTS.values())]


def expert_config(name: str):
    """The default config of expert ``name``; ``KeyError`` naming the choices for an unknown name."""
    if name not in EXPERTS:
        raise KeyError(f"unknown expert {name!r}; choose from {', '.join(EXPERTS)}")
    return EXPERTS[name][0]()


def build_expert(config, init: SceneInit) -> Expert:
    """A new expert built from ``init`` with ``config`` (a registered expert config, or an expert name for
    its defaults)."""
    if isinstance(config, str):
        config = expert_config(config)
    return EXPERTS[config.name][1](init, config)
