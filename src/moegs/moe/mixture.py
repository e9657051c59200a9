"""The mixture: K experts, their Gaussian gates and a router, rendered as one image.

For a camera at time ``t`` all experts are rasterized in one pass
(:func:`moegs.render.prepare_experts` / :func:`~moegs.render.composite_experts`: one projection,
one depth sort, one transmittance per expert and pixel), each expert's gate values splatted as
extra channels with exactly its colour's compositing weights (``m_k(p) = sum_i T_i alpha_i g_i``,
volume-aware); the router turns the stacked maps (or, for the ablations, the experts' colours, or
nothing) into per-pixel weights ``w [H, W, K]`` summing to one, and ``I(p) = sum_k w_k(p) I_k(p)``.

With frozen experts (stage 2) everything the gates do not change - the experts' Gaussians at the
view's time, their projection, colours, tile bins and, on the cpu backend, the compositing weights
(:class:`~moegs.render.SplatWeights`: the gate maps are a fixed linear function of the gates, so a
step splats them with one sparse product and composites nothing) - is kept in a cache bounded by
``cache_mb`` and reused whenever the same view comes back; it is cleared when the experts are
unfrozen and never serves experts whose parameters changed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..cameras import Camera
from ..data import View
from ..gaussians import GaussianSet, concat_sets
from ..render import ExpertsRenderOutput, PreparedExperts, SplatWeights, composite_experts, prepare_experts, splat_weights
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
        gate_maps: ``[H, W, K, C]`` splatted gates, ``None`` for routers without gates.
        alphas: ``[K, H, W]`` each expert's accumulated opacity.
        extra_maps: ``[K, H, W, C']`` the ``extra`` channels passed to :meth:`Mixture.render`, splatted
            with each expert's weights (``None`` without ``extra``).
        meta: the rasterizer's ``meta`` of the concatenated experts (``means2d``, ``radii``, ``expert_ids``, ...).
    """

    color: Tensor
    weights: Tensor
    expert_colors: Tensor
    logits: Tensor
    gate_maps: Tensor | None = None
    alphas: Tensor | None = None
    extra_maps: Tensor | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class _Frozen:
    """What a view of frozen experts keeps: their Gaussians, projection and bins, their colours, and the
    compositing weights that splat any per-Gaussian values (``base`` and ``weights`` are ``None`` where the
    backend has no weights)."""

    prep: PreparedExperts
    sets: list[GaussianSet]
    base: ExpertsRenderOutput | None
    weights: SplatWeights | None

    def nbytes(self) -> int:
        out = [self.base.color, self.base.alpha, self.base.depth] if self.base is not None else []
        return (self.prep.nbytes() + sum(s.nbytes() for s in self.sets) + sum(t.numel() * t.element_size() for t in out)
                + (self.weights.nbytes() if self.weights is not None else 0))


class Mixture(nn.Module):
    """Experts + per-expert Gaussian gates + a router.

    Args:
        experts: ``K`` experts (``moegs.experts.Expert``).
        router: the router.
        gates: one gate per expert (``moegs.moe.gates``), required when ``router.uses_gates``.
        background: ``[3]`` colour behind every expert.
        backend: rasterizer backend.
        single_pass: render all experts in one rasterizer pass (``False``: one pass per expert, the
            reference the single pass equals).
        cache_mb: memory budget (MB) of the frozen-expert render cache (0: off).
    """

    def __init__(self, experts: list[nn.Module], router: Router, gates: list[nn.Module] | None = None,
                 background: Tensor | None = None, backend: str = "auto", *, single_pass: bool = True,
                 cache_mb: float = 512.0) -> None:
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
        self.register_buffer("background", torch.zeros(3) if background is None  # cpu: moved with the module
                             else background.float().clone())
        self.backend = backend
        self.single_pass = single_pass
        self.cache_mb = float(cache_mb)
        self._cache: OrderedDict[tuple, _Frozen] = OrderedDict()
        self._cache_bytes = 0

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
        self.clear_cache()

    def __getstate__(self) -> dict:
        """A copy or pickle never carries the render cache (it is rebuilt on demand)."""
        state = super().__getstate__()
        return {**state, "_cache": OrderedDict(), "_cache_bytes": 0}

    def clear_cache(self) -> None:
        """Drop every cached frozen-expert render (also done whenever the experts change)."""
        self._cache.clear()
        self._cache_bytes = 0

    def render_expert(self, k: int, camera: Camera, t: float, extra: Tensor | None = None):
        """Expert ``k`` alone at ``(camera, t)``: its :class:`~moegs.render.RenderOutput` (the gate's
        ``[N, C]`` values splatted into ``extras`` when the router uses gates, then ``extra`` ``[N, C']``)."""
        camera = camera.to(self.background.device)
        gs = self.experts[k].gaussians_at(t)
        ch = ([self.gates[k](gs, t)] if self.router.uses_gates else []) + ([extra] if extra is not None else [])
        return gs.render(camera, extras=torch.cat(ch, dim=1) if ch else None, background=self.background,
                         backend=self.backend)

    def _cache_key(self, camera: Camera, t: float) -> tuple | None:
        """Key of a cacheable render (experts frozen, cache on), ``None`` otherwise. It holds the camera
        and every expert tensor's identity and version, so a changed expert never hits."""
        params = list(self.experts.parameters())
        if self.cache_mb <= 0 or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return None
        state = tuple((p.data_ptr(), p._version, tuple(p.shape)) for p in (*params, *self.experts.buffers()))
        cam = (tuple(camera.world_to_camera.flatten().tolist()), camera.fx, camera.fy, camera.cx, camera.cy,
               camera.width, camera.height, camera.near, camera.far)
        return cam, t, tuple(int(e.sh_degree) for e in self.experts), state

    def _prepare(self, camera: Camera, t: float) -> tuple[PreparedExperts, list[GaussianSet]]:
        """The experts' Gaussians at ``t`` and their projection, colours and tile bins for ``camera``."""
        sets = [e.gaussians_at(t) for e in self.experts]
        gs = concat_sets(sets)
        ids = torch.repeat_interleave(torch.arange(len(sets), device=gs.means.device),
                                      torch.tensor([len(s) for s in sets], device=gs.means.device))
        prep = prepare_experts(gs.means, gs.quats, gs.log_scales, gs.opacity_logits, gs.colors, ids,
                               self.num_experts, camera, sh_degree=gs.sh_degree, backend=self.backend)
        return prep, sets

    def _frozen(self, camera: Camera, t: float) -> _Frozen | None:
        """The frozen experts' render of ``(camera, t)`` (cached, or made and cached now), ``None``
        when the experts are trainable or the cache is off.

        The compositing weights (about five composites' worth of work) are made only when gradients
        are on, i.e. when the gates train on the view and reuse them; a render without gradients keeps
        the projection and bins alone, and gains the weights if a training step meets it later."""
        key = self._cache_key(camera, t)
        if key is None:
            return None
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            if entry.weights is not None or not torch.is_grad_enabled():
                return entry
            self._cache_bytes -= self._cache.pop(key).nbytes()
            prep, sets = entry.prep, entry.sets
        else:
            with torch.no_grad():
                prep, sets = self._prepare(camera, t)
            prep, sets = prep.detach(), [s.detach() for s in sets]
        weights = splat_weights(prep) if torch.is_grad_enabled() else None
        base = None  # colours are kept only with the weights; without them render() composites colours and gates
        if weights is not None:
            with torch.no_grad():
                base = composite_experts(prep, background=self.background, weights=weights)
        entry = _Frozen(prep, sets, base, weights)
        if entry.nbytes() <= self.cache_mb * 2**20:
            self._cache[key] = entry
            self._cache_bytes += entry.nbytes()
            while self._cache_bytes > self.cache_mb * 2**20:
                self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes()
        return entry

    def render(self, view: View | Camera, t: float | None = None, *, extra: Tensor | None = None) -> MixtureOutput:
        """Render the mixture for a view (its camera and time) or a camera at ``t`` (default ``camera.time``).

        Args:
            extra: ``[N_1 + ... + N_K, C']`` further per-Gaussian channels (experts' Gaussians in order),
                splatted with each expert's weights into ``MixtureOutput.extra_maps``.
        """
        camera = view.camera if isinstance(view, View) else view
        t = float(camera.time if t is None else t)
        camera = camera.to(self.background.device)
        frozen = self._frozen(camera, t) if self.single_pass else None
        if frozen is not None and frozen.weights is not None:
            # frozen experts: colours as cached, gates and extra channels splatted by the cached weights
            colors, alphas, meta = frozen.base.color, frozen.base.alpha, frozen.base.meta
            gates = torch.cat([g(s, t) for g, s in zip(self.gates, frozen.sets)]) if self.router.uses_gates else None
            gate_maps = frozen.weights.splat(gates).permute(1, 2, 0, 3) if gates is not None else None
            extra_maps = frozen.weights.splat(extra) if extra is not None else None
        elif self.single_pass:
            prep, sets = (frozen.prep, frozen.sets) if frozen is not None else self._prepare(camera, t)
            channels = [torch.cat([g(s, t) for g, s in zip(self.gates, sets)])] if self.router.uses_gates else []
            C = channels[0].shape[1] if channels else 0
            if extra is not None:
                channels.append(extra.to(prep.rgb))
            out = composite_experts(prep, extras=torch.cat(channels, dim=1) if channels else None,
                                    background=self.background)
            colors, alphas, meta = out.color, out.alpha, out.meta
            gate_maps = out.extras[..., :C].permute(1, 2, 0, 3) if self.router.uses_gates else None  # [H, W, K, C]
            extra_maps = out.extras[..., C:] if extra is not None else None
        else:
            sizes = [e.splats["means"].shape[0] for e in self.experts]
            parts = extra.split(sizes) if extra is not None else [None] * self.num_experts
            outs = [self.render_expert(k, camera, t, part) for k, part in enumerate(parts)]
            colors, alphas = torch.stack([o.color for o in outs]), torch.stack([o.alpha for o in outs])
            C = self.gates[0].channels if self.router.uses_gates else 0
            gate_maps = torch.stack([o.extras[..., :C] for o in outs], dim=2) if self.router.uses_gates else None
            extra_maps = torch.stack([o.extras[..., C:] for o in outs]) if extra is not None else None
            meta = {"per_expert": [o.meta for o in outs]}
        weights, logits = self.router(RouterInputs(t=t, rays=None, camera=camera, expert_colors=colors,
                                                   gate_maps=gate_maps, origin=camera.center,
                                                   alphas=alphas.permute(1, 2, 0)))
        color = torch.einsum("hwk,khwc->hwc", weights, colors)
        return MixtureOutput(color=color, weights=weights, expert_colors=colors, logits=logits, gate_maps=gate_maps,
                             alphas=alphas, extra_maps=extra_maps, meta=meta)
