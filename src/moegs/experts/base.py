"""The ``Expert`` protocol: what the trainer and the mixture router need of a dynamic model.

An expert is an ``nn.Module`` with a ParameterDict ``splats`` of per-Gaussian
parameters (first dim ``N``; densified by a strategy, so any extra
per-Gaussian state it keeps there follows clone/split/prune) and whatever
shared networks it needs. At a time ``t`` it presents a :class:`GaussianSet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..gaussians import GaussianSet

__all__ = ["Expert", "ParamGroup", "SceneInit"]


@dataclass
class ParamGroup:
    """Parameters optimised together with one Adam and one learning-rate schedule.

    The learning rate decays log-linearly from ``lr`` to ``lr_final`` over the
    run (``None`` keeps it constant), after ``delay_steps`` steps at ``lr``.
    """

    params: list[nn.Parameter]
    lr: float
    lr_final: float | None = None
    delay_steps: int = 0


@dataclass
class SceneInit:
    """What an expert is built from: initial points and the scene's scale and time span.

    Attributes:
        points: ``[M, 3]``; colors: ``[M, 3]`` in ``[0, 1]``.
        extent: spatial scale of the scene (``Scene.extent``).
        times: ``[T]`` sorted distinct normalised times of the training views.
    """

    points: Tensor
    colors: Tensor
    extent: float
    times: Tensor


@runtime_checkable
class Expert(Protocol):
    """A dynamic Gaussian model usable alone and as one expert of a mixture."""

    name: str
    splats: nn.ParameterDict
    sh_degree: int  # active SH degree; the trainer raises it on its schedule
    max_sh_degree: int

    def gaussians_at(self, t: float) -> GaussianSet:
        """The Gaussians to rasterize at normalised time ``t`` in ``[0, 1]`` (differentiable)."""

    def param_groups(self) -> dict[str, ParamGroup]:
        """Optimiser groups. Per-Gaussian groups are keyed exactly like ``splats``
        (so densification updates their moments); network groups use other keys."""

    def regularization(self, step: int) -> dict[str, Tensor]:
        """Named scalar losses added to the photometric loss at ``step``."""

    def on_step(self, step: int) -> None:
        """Called before each training step (stage switches, keyframe growth, ...)."""
