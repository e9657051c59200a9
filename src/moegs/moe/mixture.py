"""The mixture: K experts, their Gaussian gates and a router, rendered as one image.

For a camera at time ``t`` each expert ``k`` is rasterized once, its gate values
splatted as an extra channel with exactly the colour's compositing weights
(``m_k(p) = sum_i T_i alpha_i g_i``, volume-aware); the router turns the
stacked maps (or, for the ablations, the experts' colours, or nothing) into
per-pixel weights ``w [H, W, K]`` summing to one, and
``I(p) = sum_k w_k(p) I_k(p)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..cameras import Camera
from ..data import View
from .router import Router, RouterInputs

__all__ = ["Mixture", "MixtureOutput"]


@dataclass
class MixtureOutput:
    """One rendered frame of a mixture.

    Attributes:
        color: ``[H, W, 3]`` blended image.
        weights: ``[H, W, K]`` per-pixel expert weights (sum to one over ``K``).
        expert_colors: ``[K, H, W, 3]`` each expert's render (over the background).
        logits: ``[H, W, K]`` router logits before the temperature.
        gate_maps: ``[H, W, K]`` splatted gates, ``None`` for routers without gates.
        metas: each expert's rasterizer ``meta`` (``means2d``, ``radii``, ...).
    """

    color: Tensor
    weights: Tensor
    expert_colors: Tensor
    logits: Tensor
    gate_maps: Tensor | None = None
    metas: list[dict] = field(default_factory=list)


class Mixture(nn.Module):
    """Experts + per-expert Gaussian gates + a router.

    Args:
        experts: ``K`` experts (``moegs.experts.Expert``).
        router: the router.
        gates: one gate per expert (``moegs.moe.gates``), required when ``router.uses_gates``.
        background: ``[3]`` colour behind every expert.
        backend: rasterizer backend.
    """

    def __init__(self, experts: list[nn.Module], router: Router, gates: list[nn.Module] | None = None,
                 background: Tensor | None = None, backend: str = "auto") -> None:
        super().__init__()
        if len(experts) < 1:
            raise ValueError("a mixture needs at least one expert")
        if router.num_experts != len(experts):
            raise ValueError(f"router built for {router.num_experts} experts, mixture has {len(experts)}")
        if router.uses_gates:
            if gates is None or len(gates) != len(experts):
                raise ValueError(f"the {router.kind!r} router needs one gate per expert")
            for k, (e, g) in enumerate(zip(experts, gates)):
                n, m = e.splats["means"].shape[0], next(iter(g.per_gaussian.values())).shape[0]
                if n != m:
                    raise ValueError(f"expert {k} has {n} Gaussians but its gate {m}")
        self.experts = nn.ModuleList(experts)
        self.gates = nn.ModuleList(gates if router.uses_gates else [])
        self.router = router
        self.register_buffer("background", torch.zeros(3) if background is None else background.float().clone())
        self.backend = backend

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def names(self) -> list[str]:
        """Expert names, made unique with their index when repeated."""
        raw = [e.name for e in self.experts]
        return [f"{n}#{k}" if raw.count(n) > 1 else n for k, n in enumerate(raw)]

    def set_experts_trainable(self, trainable: bool) -> None:
        """Freeze (stage 2) or unfreeze (stage 3) every expert parameter."""
        for e in self.experts:
            e.requires_grad_(trainable)

    def render_expert(self, k: int, camera: Camera, t: float):
        """Expert ``k`` alone at ``(camera, t)``: its :class:`~moegs.render.RenderOutput` (gate splatted
        into ``extras[..., 0]`` when the router uses gates)."""
        camera = camera.to(self.background.device)
        gs = self.experts[k].gaussians_at(t)
        extras = self.gates[k](gs, t)[:, None] if self.router.uses_gates else None
        return gs.render(camera, extras=extras, background=self.background, backend=self.backend)

    def render(self, view: View | Camera, t: float | None = None) -> MixtureOutput:
        """Render the mixture for a view (its camera and time) or a camera at ``t`` (default ``camera.time``)."""
        camera = view.camera if isinstance(view, View) else view
        t = float(camera.time if t is None else t)
        camera = camera.to(self.background.device)
        outs = [self.render_expert(k, camera, t) for k in range(self.num_experts)]
        colors = torch.stack([o.color for o in outs])  # [K, H, W, 3]
        gate_maps = torch.cat([o.extras for o in outs], dim=-1) if self.router.uses_gates else None  # [H, W, K]
        weights, logits = self.router(RouterInputs(t=t, rays=camera.ray_directions(), expert_colors=colors,
                                                   gate_maps=gate_maps))
        color = torch.einsum("hwk,khwc->hwc", weights, colors)
        return MixtureOutput(color=color, weights=weights, expert_colors=colors, logits=logits, gate_maps=gate_maps,
                             metas=[o.meta for o in outs])
