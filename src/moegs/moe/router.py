"""Routers: per-pixel expert weights ``[H, W, K]`` that sum to one, five variants behind one interface.

Every router maps :class:`RouterInputs` of one rendered frame to logits
``[H, W, K]``; :meth:`Router.forward` turns them into weights with the same
temperature softmax in training and evaluation (the temperature is a buffer,
saved with the router, so a loaded mixture normalises exactly as it was trained).

Variants (``MoEConfig.router``):

- ``"uniform"``: ``1 / K`` everywhere; nothing to learn (the plain average of the experts).
- ``"image"``: one weight per expert per image, ``softmax_k((a_k + (t - 1/2) b_k) / tau)``.
- ``"pixel_rgb"``: per-pixel decoder on the experts' rendered colours, ray directions and time
  (no Gaussian gates).
- ``"gates"``: Gaussian gates, no decoder: ``softmax_k(log(m_k + eps) / tau)`` of the splatted gate
  maps ``m``, i.e. (at ``tau = 1``) the gate maps normalised per pixel.
- ``"full"``: the volume-aware pixel router, a decoder on the splatted gate maps, ray directions and time.

The decoder is a stack of 1x1 convolutions (a per-pixel MLP). Its output layer
starts at zero weights and a bias equal to the prior logits (see
:func:`prior_logits`), so training starts from a known blend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..encoding import time_features

__all__ = ["RouterKind", "ROUTERS", "RouterInputs", "Router", "PixelDecoder", "prior_logits"]

RouterKind = Literal["uniform", "image", "pixel_rgb", "gates", "full"]
ROUTERS: tuple[str, ...] = ("uniform", "image", "pixel_rgb", "gates", "full")
# Routers whose input includes splatted gate maps (their experts carry Gaussian gates).
GATED: tuple[str, ...] = ("gates", "full")

_EPS = 1e-4  # floor of the gate maps in the "gates" router's log


@dataclass
class RouterInputs:
    """What a router sees of one frame.

    Attributes:
        t: normalised time of the frame.
        rays: ``[H, W, 3]`` unit world-space ray directions.
        expert_colors: ``[K, H, W, 3]`` each expert's render.
        gate_maps: ``[H, W, K]`` splatted gates (``None`` for routers without gates).
    """

    t: float
    rays: Tensor
    expert_colors: Tensor
    gate_maps: Tensor | None = None


def prior_logits(num_experts: int, favoured: int | None, weight: float) -> Tensor:
    """``[K]`` logits whose softmax puts ``weight`` on expert ``favoured`` and shares the rest evenly.

    ``favoured=None`` (or ``weight <= 1/K``) gives zeros, the uniform start.
    """
    out = torch.zeros(num_experts)  # cpu: a prior the Router is built from
    if favoured is None or num_experts < 2 or weight <= 1.0 / num_experts:
        return out
    weight = min(weight, 1.0 - 1e-4)
    out[favoured] = math.log(weight * (num_experts - 1) / (1.0 - weight))
    return out


class PixelDecoder(nn.Module):
    """Per-pixel MLP as 1x1 convolutions: ``[H, W, C_in]`` -> ``[H, W, K]`` logits."""

    def __init__(self, in_channels: int, num_experts: int, hidden: int = 32, layers: int = 2,
                 bias_init: Tensor | None = None) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c = in_channels
        for _ in range(layers):
            mods += [nn.Conv2d(c, hidden, 1), nn.ReLU()]
            c = hidden
        out = nn.Conv2d(c, num_experts, 1)
        nn.init.zeros_(out.weight)
        with torch.no_grad():
            out.bias.copy_(bias_init if bias_init is not None else out.bias.new_zeros(num_experts))
        self.net = nn.Sequential(*mods, out)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[H, W, C_in]`` -> ``[H, W, K]``."""
        return self.net(x.permute(2, 0, 1)[None])[0].permute(1, 2, 0)


class Router(nn.Module):
    """One router variant (see the module docstring) with a temperature softmax.

    Args:
        kind: the variant.
        num_experts: ``K``.
        temperature: softmax temperature ``tau`` (a buffer; the trainer may anneal it).
        prior: ``[K]`` initial logits (see :func:`prior_logits`); for ``"gates"`` the prior is
            carried by the gates' initial values instead.
        hidden, layers: decoder width and number of hidden 1x1 layers.
        time_freqs: Fourier frequencies of the decoder's time encoding.
    """

    def __init__(self, kind: RouterKind, num_experts: int, *, temperature: float = 1.0,
                 prior: Tensor | None = None, hidden: int = 32, layers: int = 2, time_freqs: int = 2) -> None:
        super().__init__()
        if kind not in ROUTERS:
            raise ValueError(f"unknown router {kind!r}; choose from {', '.join(ROUTERS)}")
        self.kind = kind
        self.num_experts = num_experts
        self.time_freqs = time_freqs
        self.register_buffer("temperature", torch.tensor(float(temperature)))  # cpu: built with the module, moved by .to(device)
        prior = self.temperature.new_zeros(num_experts) if prior is None else prior.float()
        enc = 1 + 2 * time_freqs
        if kind == "image":
            self.static = nn.Parameter(prior.clone())  # [K]
            self.slope = nn.Parameter(prior.new_zeros(num_experts))  # [K]
        elif kind == "pixel_rgb":
            self.decoder = PixelDecoder(3 * num_experts + 3 + enc, num_experts, hidden, layers, prior)
        elif kind == "full":
            self.decoder = PixelDecoder(num_experts + 3 + enc, num_experts, hidden, layers, prior)

    @property
    def uses_gates(self) -> bool:
        return self.kind in GATED

    def logits(self, x: RouterInputs) -> Tensor:
        """``[H, W, K]`` logits before the temperature."""
        K, H, W, _ = x.expert_colors.shape
        if K != self.num_experts:
            raise ValueError(f"router for {self.num_experts} experts got {K} renders")
        dev = x.rays.device
        if self.kind == "uniform":
            return x.rays.new_zeros(H, W, K)
        if self.kind == "image":
            return (self.static + (float(x.t) - 0.5) * self.slope).expand(H, W, K)
        if x.gate_maps is None and self.uses_gates:
            raise ValueError(f"the {self.kind!r} router needs gate maps")
        if self.kind == "gates":
            return torch.log(x.gate_maps.clamp_min(0.0) + _EPS)
        enc = time_features(float(x.t), self.time_freqs).to(dev).expand(H, W, -1)
        if self.kind == "pixel_rgb":
            feats = torch.cat((x.expert_colors.permute(1, 2, 0, 3).reshape(H, W, 3 * K), x.rays, enc), dim=-1)
        else:
            feats = torch.cat((x.gate_maps, x.rays, enc), dim=-1)
        return self.decoder(feats)

    def forward(self, x: RouterInputs) -> tuple[Tensor, Tensor]:
        """``(weights [H, W, K], logits [H, W, K])``; weights are ``softmax(logits / tau)`` over experts."""
        logits = self.logits(x)
        return torch.softmax(logits / self.temperature, dim=-1), logits

