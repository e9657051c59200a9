"""Building a fresh mixture over trained experts, its router started from the best-expert prior."""

from __future__ import annotations

import torch
from torch import nn

from ..data import Scene, View
from ..experts import render_expert
from ..train.config import to_dict
from ..train.loss import photometric_loss
from ..train.trainer import resolve_device
from .config import MoEConfig
from .gates import build_gate
from .mixture import Mixture
from .router import GATED, Router, prior_logits

__all__ = ["build_mixture", "expert_meta", "router_from_config", "spaced_views"]


def expert_meta(expert: nn.Module, scene_meta: dict, source: str | None = None, steps: int = 0,
                digest: str | None = None) -> dict:
    """What a mixture checkpoint keeps of an expert besides its weights (enough to rebuild it).

    ``scene_meta`` holds ``extent`` and ``times``; ``steps`` is how long it was trained alone; ``digest``
    the SHA-256 of the checkpoint file ``source`` (:func:`moegs.io.file_digest`), which a resumed run checks.
    """
    return {"expert": expert.name, "expert_config": to_dict(expert.config),
            "scene_meta": {"extent": float(scene_meta["extent"]), "times": [float(t) for t in scene_meta["times"]]},
            "source": source, "steps": int(steps), "digest": digest}


def router_from_config(config: MoEConfig, num_experts: int, prior: torch.Tensor | None = None) -> Router:
    """The :class:`Router` ``config`` describes, for ``num_experts`` experts, started from ``prior`` logits."""
    return Router(config.router, num_experts, temperature=config.temperature, prior=prior, hidden=config.hidden,
                  layers=config.layers, time_freqs=config.time_freqs, view_inputs=config.router_view,
                  ray_jitter=config.ray_jitter, view_dropout=config.view_dropout,
                  gate_background=config.gate_background)


def spaced_views(views: list[View], n: int) -> list[View]:
    """``n`` of ``views``, evenly spaced (all of them when ``n >= len(views)``)."""
    if n >= len(views):
        return list(views)
    return [views[round(i * (len(views) - 1) / max(1, n - 1))] for i in range(n)]


@torch.no_grad()
def _expert_losses(experts: list[nn.Module], scene: Scene, views: list[View], cfg: MoEConfig,
                   device: torch.device) -> list[float]:
    bg = scene.background.to(device)
    out = []
    for e in experts:
        total = 0.0
        for v in views:
            img = render_expert(e, v.camera, v.time, background=bg, backend=cfg.backend).color
            total += float(photometric_loss(img, scene.image(v).to(device), cfg.ssim_lambda))
        out.append(total / max(1, len(views)))
    return out


def build_mixture(experts: list[nn.Module], scene: Scene, config: MoEConfig,
                  device: torch.device | None = None) -> tuple[Mixture, dict]:
    """A fresh mixture of ``experts`` for ``scene``, its router started from the best-expert prior.

    Returns ``(mixture, info)`` with ``info`` = ``{"expert_train_losses": [K], "prior_expert": k | None}``.
    """
    config.check()
    device = device or resolve_device(config.device)
    K = len(experts)
    for e in experts:
        e.to(device)
    losses = (_expert_losses(experts, scene, spaced_views(scene.train_views, config.prior_views), config, device)
              if config.router != "uniform" and config.prior_weight > 1.0 / K else [])
    best = min(range(K), key=lambda k: losses[k]) if losses else None
    prior = prior_logits(K, best, config.prior_weight)
    gates = None
    if config.router in GATED:
        # "gates" normalises the gate maps directly and "published" adds them to its logits: their prior
        # is carried by the gates' initial values.
        if config.router == "gates":
            p = torch.softmax(prior, 0)
        elif config.router == "published":
            p = config.gate_init + prior * config.temperature
        else:
            p = prior.new_full((K,), 0.5)
        gates = [build_gate(config.gate_kind, e.splats["means"].shape[0], extent=scene.extent, init=float(p[k]),
                            feature_dim=config.gate_feature_dim, hidden=config.gate_hidden,
                            time_freqs=config.time_freqs) for k, e in enumerate(experts)]
    router = router_from_config(config, K, prior=prior * config.temperature)
    mixture = Mixture(experts, router, gates, scene.background, config.backend,
                      single_pass=config.single_pass, cache_mb=config.render_cache_mb).to(device)
    return mixture, {"expert_train_losses": losses, "prior_expert": best}
