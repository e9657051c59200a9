"""The ``Expert`` protocol: what the trainer and the mixture router need of a dynamic model.

An expert is an ``nn.Module`` with a ParameterDict ``splats`` of per-Gaussian
parameters (first dim ``N``; densified by a strategy, so any extra
per-Gaussian state it keeps there follows clone/split/prune) and whatever
shared networks it needs. At a time ``t`` it presents a :class:`GaussianSet`;
:func:`render_expert` is how every caller renders one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..cameras import Camera
from ..gaussians import GaussianSet
from ..render import Backend, RenderOutput

__all__ = ["CanonicalConfig", "Expert", "GaussianLR", "ParamGroup", "SceneInit", "StepClock", "render_expert",
           "splat_param_groups"]


@dataclass
class ParamGroup:
    """Parameters optimised together: one Adam param group, one learning-rate schedule.

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
class CanonicalConfig:
    """The canonical 3D Gaussians every expert holds in ``splats`` (a field ``gaussians`` of each expert config)."""

    # Highest SH degree (0-3).
    sh_degree: int = 3
    # Opacity of the initial Gaussians.
    init_opacity: float = 0.1
    # Subsample the initial point cloud to at most this many points.
    max_init_points: int = 100_000
    # Learning rates of the Gaussian parameters.
    lr: GaussianLR = field(default_factory=GaussianLR)


@runtime_checkable
class Expert(Protocol):
    """A dynamic Gaussian model usable alone and as one expert of a mixture.

    What an expert module provides (and nothing else is needed; see ``moegs/experts/__init__.py``):

    - **Config**: a dataclass with ``name: ClassVar[str]`` (the registry key), a
      ``gaussians: CanonicalConfig`` field (SH degree, initial opacity and points, learning
      rates) and its own fields, each commented; every field is settable as
      ``--set expert.<field>=value`` and stored in checkpoints.
    - **Constructor** ``Model(init: SceneInit, config)``: builds ``splats`` (usually with
      :func:`moegs.gaussians.init_splats`) and its networks from ``init`` and ``config`` alone,
      deterministically given the torch seed.
    - **Reload rule**: a checkpoint is restored by calling the constructor with a stand-in
      ``SceneInit`` (the stored Gaussian centres, the stored extent and times), resizing every
      parameter and buffer to its stored shape and loading the state dict. So everything the
      expert needs after construction (step counters, stage flags, keyframe times, boxes) must be
      a parameter or a registered buffer, never a plain attribute.
    - **Hooks** below: ``gaussians_at`` (differentiable), ``param_groups`` (per-Gaussian groups
      keyed exactly like ``splats``), ``regularization``, ``on_step``; optionally
      ``splats.max_opacity(splats) -> [N]`` for time-varying opacity (pruning) and
      ``splats.split_hook`` for per-Gaussian state that a split must treat specially
      (see :mod:`moegs.train.ops`).
    """

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


class StepClock(nn.Module):
    """The training step an expert last saw, kept as a buffer so a reloaded expert is in the same stage.

    Every stage switch and ramp of an expert reads it (a static warm-up, annealing, noise decay), so
    they follow exact resume and checkpoints without special code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # cpu: built with the module, moved by .to(device)

    def set(self, step: int) -> None:
        self.step.fill_(step)

    def reached(self, steps: int) -> bool:
        """Whether ``steps`` steps have been done (always true for ``steps <= 0``)."""
        return int(self.step) >= steps

    def ramp(self, steps: int) -> float:
        """``min(1, step / steps)``: a linear ramp over ``steps`` steps (1 for ``steps <= 0``)."""
        return 1.0 if steps <= 0 else min(1.0, int(self.step) / steps)


def render_expert(expert: Expert, camera: Camera, t: float | None = None, *, extras: Tensor | None = None,
                  background: Tensor | None = None, backend: Backend = "auto") -> RenderOutput:
    """Render ``expert`` at time ``t`` (default ``camera.time``) into ``camera``.

    Args:
        expert: any :class:`Expert`.
        camera: the camera (moved to the expert's device).
        t: normalised time in ``[0, 1]``.
        extras: ``[N, C]`` per-Gaussian channels splatted with the colour's weights.
        background: ``[3]`` colour behind the Gaussians (default black).
        backend: rasterizer backend.
    """
    device = expert.splats["means"].device
    t = float(camera.time if t is None else t)
    bg = None if background is None else background.to(device)
    return expert.gaussians_at(t).render(camera.to(device), extras=extras, background=bg, backend=backend)
