"""Dynamic Gaussian experts, each usable alone and as one expert of a mixture.

:data:`EXPERTS` is the explicit registry ``name -> (ConfigClass, ModelClass)``;
a model is built as ``ModelClass(SceneInit, ConfigClass(...))``.
"""

from __future__ import annotations

from .base import Expert, ParamGroup, SceneInit
from .deformable import DeformableConfig, DeformableGaussians
from .embedding import EmbeddingConfig, EmbeddingGaussians
from .hexplane import HexPlaneConfig, HexPlaneGaussians
from .keyframe import KeyframeConfig, KeyframeGaussians
from .spacetime import SpacetimeConfig, SpacetimeGaussians
from .static import StaticConfig, StaticGaussians

__all__ = ["EXPERTS", "Expert", "ParamGroup", "SceneInit", "build_expert"]

EXPERTS: dict[str, tuple[type, type]] = {
    "static": (StaticConfig, StaticGaussians),
    "deformable": (DeformableConfig, DeformableGaussians),
    "spacetime": (SpacetimeConfig, SpacetimeGaussians),
    "keyframe": (KeyframeConfig, KeyframeGaussians),
    "hexplane": (HexPlaneConfig, HexPlaneGaussians),
    "embedding": (EmbeddingConfig, EmbeddingGaussians),
}


def build_expert(name: str, init: SceneInit, config=None):
    """A new expert ``name`` built from ``init`` with ``config`` (default: the expert's defaults)."""
    if name not in EXPERTS:
        raise KeyError(f"unknown expert {name!r}; choose from {', '.join(EXPERTS)}")
    config_cls, model_cls = EXPERTS[name]
    return model_cls(init, config if config is not None else config_cls())
