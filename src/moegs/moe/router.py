"""Routers: per-pixel expert weights ``[H, W, K]`` that sum to one, six variants behind one interface.

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
- ``"full"``: the volume-aware pixel router, one joint decoder on all experts' splatted gate maps,
  ray directions and time, giving the ``K`` logits together.
- ``"published"``: the authors' router (cvsp-lab/MoE-GS, ``LiteSandwich`` in ``helper_model.py``,
  ``render_E3`` and ``train_E3.py``). Each Gaussian carries three gate channels
  (:class:`~moegs.moe.gates.PublishedGate`: a static weight ``w``, a weight ``v`` the decoder sees with
  the ray, and a time feature ``f`` multiplied by ``t``), splatted per expert into maps
  ``(W_k, V_k, T_k)``; one tiny decoder ``Phi`` shared by all experts (1x1 convolutions
  ``8 -> 6 -> 3 -> 1``, no bias, ReLU between) reads ``(V_k, T_k)`` and a 6-channel ray encoding
  (ray origin and unit direction), and ``logit_k = W_k + Phi(V_k, T_k, ray)``; a softmax across experts
  with a sharp temperature (``0.01`` in their training). 69 parameters in the decoder.

Where the authors' training and test paths differ, and what is done here:

- *temperature*: training normalises with ``softmax(logits / 0.01)``, their test code and renderer with
  ``softmax(logits)`` (``tau = 1``), so the blend evaluated is not the one trained. Here the one
  temperature buffer is used by both (the trained blend is the evaluated blend).
- *per-camera embeddings*: training renders their E-D3DGS expert with the training camera's index,
  test with none; the experts here have no per-camera inputs, so both paths are the same.
- *weight-map background*: their weight rasterizer composites the gate channels over the white
  background (every channel gets ``+ T_final``), in training and test alike; kept
  (``gate_background = 1``), so a pixel an expert leaves empty reads like a fully covered one.
- *decoder initialisation*: PyTorch's default there; here the last layer starts at zero (as every
  decoder here), so training starts from the gates' initial blend (uniform, or the best-expert prior
  carried by ``w``).

The other decoders are stacks of 1x1 convolutions (a per-pixel MLP) whose output layer starts at
zero weights and a bias equal to the prior logits (see :func:`prior_logits`), so training starts from
a known blend.

Generalisation switches (every decoder router): ``view_inputs`` chooses the ray encoding the decoder
sees (``"origin_dir"`` 6 channels, ``"dir"`` 3, ``"none"``); in training mode only, ``ray_jitter``
adds Gaussian noise of that standard deviation to the ray directions and ``view_dropout`` drops the
view channels (inverted dropout), so the router cannot key on the exact training rays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..cameras import Camera
from ..encoding import time_features

__all__ = ["RouterKind", "ROUTERS", "GATED", "VIEW_INPUTS", "RouterInputs", "Router", "PixelDecoder",
           "SharedGateDecoder", "prior_logits"]

RouterKind = Literal["uniform", "image", "pixel_rgb", "gates", "full", "published"]
ROUTERS: tuple[str, ...] = ("uniform", "image", "pixel_rgb", "gates", "full", "published")
# Routers whose input includes splatted gate maps (their experts carry Gaussian gates).
GATED: tuple[str, ...] = ("gates", "full", "published")
# The decoder's ray encodings and their channel counts.
VIEW_INPUTS: dict[str, int] = {"origin_dir": 6, "dir": 3, "none": 0}

_EPS = 1e-4  # floor of the gate maps in the "gates" router's log


@dataclass
class RouterInputs:
    """What a router sees of one frame.

    Attributes:
        t: normalised time of the frame.
        rays: ``[H, W, 3]`` unit world-space ray directions, or ``None``: those of ``camera``, made
            when a router first asks (:meth:`directions`; the ``gates`` router never does).
        expert_colors: ``[K, H, W, 3]`` each expert's render.
        gate_maps: ``[H, W, K, C]`` splatted gates, no background (``None`` for routers without gates).
        origin: ``[3]`` camera centre (``None``: the origin).
        alphas: ``[H, W, K]`` each expert's accumulated opacity (``None``: fully covered).
        camera: the frame's camera (where ``rays`` is ``None``).
    """

    t: float
    rays: Tensor | None
    expert_colors: Tensor
    gate_maps: Tensor | None = None
    origin: Tensor | None = None
    alphas: Tensor | None = None
    camera: Camera | None = None

    def directions(self) -> Tensor:
        """``[H, W, 3]`` the ray directions (``rays``, or made from ``camera`` once)."""
        if self.rays is None:
            if self.camera is None:
                raise ValueError("router inputs need rays or a camera")
            self.rays = self.camera.ray_directions()
        return self.rays


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


class SharedGateDecoder(nn.Module):
    """The published router's decoder, shared by all experts: per expert ``[2 + R]`` -> ``[1]``.

    1x1 convolutions ``(2 + R) -> 6 -> 3 -> 1`` without bias, ReLU between; ``R`` is the ray
    encoding's size (6 in the published router). The last layer starts at zero.
    """

    def __init__(self, view_channels: int = 6) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2 + view_channels, 6, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(6, 3, 1, bias=False), nn.ReLU(), nn.Conv2d(3, 1, 1, bias=False))
        nn.init.zeros_(self.net[-1].weight)

    def forward(self, gates: Tensor, view: Tensor) -> Tensor:
        """``gates`` ``[K, H, W, 2]`` (the ``V`` and ``T`` maps), ``view`` ``[H, W, R]`` -> ``[H, W, K]``."""
        K = gates.shape[0]
        x = torch.cat((gates, view.expand(K, *view.shape)), dim=-1).permute(0, 3, 1, 2)  # [K, 2 + R, H, W]
        return self.net(x)[:, 0].permute(1, 2, 0)


class Router(nn.Module):
    """One router variant (see the module docstring) with a temperature softmax.

    Args:
        kind: the variant.
        num_experts: ``K``.
        temperature: softmax temperature ``tau`` (a buffer; the trainer may anneal it).
        prior: ``[K]`` initial logits (see :func:`prior_logits`); for ``"gates"`` and ``"published"``
            the prior is carried by the gates' initial values instead.
        hidden, layers: decoder width and number of hidden 1x1 layers (not ``"published"``: fixed).
        time_freqs: Fourier frequencies of the decoder's time encoding (not ``"published"``).
        view_inputs: the decoder's ray encoding (``VIEW_INPUTS``); ``None``: ``"origin_dir"`` for
            ``"published"``, ``"dir"`` for the others.
        ray_jitter: training only: standard deviation of the noise added to the ray directions.
        view_dropout: training only: dropout probability of the decoder's view channels.
        gate_background: ``"published"``: value the gate maps are composited over.
    """

    def __init__(self, kind: RouterKind, num_experts: int, *, temperature: float = 1.0,
                 prior: Tensor | None = None, hidden: int = 32, layers: int = 2, time_freqs: int = 2,
                 view_inputs: str | None = None, ray_jitter: float = 0.0, view_dropout: float = 0.0,
                 gate_background: float = 1.0) -> None:
        super().__init__()
        if kind not in ROUTERS:
            raise ValueError(f"unknown router {kind!r}; choose from {', '.join(ROUTERS)}")
        view_inputs = view_inputs or ("origin_dir" if kind == "published" else "dir")
        if view_inputs not in VIEW_INPUTS:
            raise ValueError(f"unknown view inputs {view_inputs!r}; choose from {', '.join(VIEW_INPUTS)}")
        self.kind = kind
        self.num_experts = num_experts
        self.time_freqs = time_freqs
        self.view_inputs = view_inputs
        self.ray_jitter = float(ray_jitter)
        self.view_dropout = float(view_dropout)
        self.gate_background = float(gate_background)
        self.register_buffer("temperature", torch.tensor(float(temperature)))  # cpu: built with the module, moved by .to(device)
        prior = self.temperature.new_zeros(num_experts) if prior is None else prior.float()
        enc = 1 + 2 * time_freqs
        R = VIEW_INPUTS[view_inputs]
        if kind == "image":
            self.static = nn.Parameter(prior.clone())  # [K]
            self.slope = nn.Parameter(prior.new_zeros(num_experts))  # [K]
        elif kind == "pixel_rgb":
            self.decoder = PixelDecoder(3 * num_experts + R + enc, num_experts, hidden, layers, prior)
        elif kind == "full":
            self.decoder = PixelDecoder(num_experts + R + enc, num_experts, hidden, layers, prior)
        elif kind == "published":
            self.decoder = SharedGateDecoder(R)

    @property
    def uses_gates(self) -> bool:
        return self.kind in GATED

    def logits(self, x: RouterInputs) -> Tensor:
        """``[H, W, K]`` logits before the temperature."""
        K, H, W, _ = x.expert_colors.shape
        if K != self.num_experts:
            raise ValueError(f"router for {self.num_experts} experts got {K} renders")
        dev = x.expert_colors.device
        if self.kind == "uniform":
            return x.expert_colors.new_zeros(H, W, K)
        if self.kind == "image":
            return (self.static + (float(x.t) - 0.5) * self.slope).expand(H, W, K)
        if x.gate_maps is None and self.uses_gates:
            raise ValueError(f"the {self.kind!r} router needs gate maps")
        if self.kind == "gates":
            return torch.log(x.gate_maps[..., 0].clamp_min(0.0) + _EPS)
        view = self.view_features(x)
        if self.kind == "published":
            g = x.gate_maps
            if x.alphas is not None and self.gate_background != 0:
                g = g + self.gate_background * (1.0 - x.alphas)[..., None]
            return g[..., 0] + self.decoder(g[..., 1:3].permute(2, 0, 1, 3), view)
        enc = time_features(float(x.t), self.time_freqs).to(dev).expand(H, W, -1)
        if self.kind == "pixel_rgb":
            feats = torch.cat((x.expert_colors.permute(1, 2, 0, 3).reshape(H, W, 3 * K), view, enc), dim=-1)
        else:
            feats = torch.cat((x.gate_maps[..., 0], view, enc), dim=-1)
        return self.decoder(feats)

    def view_features(self, x: RouterInputs) -> Tensor:
        """``[H, W, R]`` the decoder's ray encoding (jittered and dropped out in training mode)."""
        if self.view_inputs == "none":
            return x.expert_colors.new_zeros(*x.expert_colors.shape[1:3], 0)
        rays = x.directions()
        if self.training and self.ray_jitter > 0:
            rays = nn.functional.normalize(rays + self.ray_jitter * torch.randn_like(rays), dim=-1)
        if self.view_inputs == "origin_dir":
            o = x.origin if x.origin is not None else rays.new_zeros(3)
            rays = torch.cat((o.to(rays).expand_as(rays), rays), dim=-1)
        if self.training and self.view_dropout > 0:
            rays = nn.functional.dropout(rays, self.view_dropout)
        return rays

    def forward(self, x: RouterInputs) -> tuple[Tensor, Tensor]:
        """``(weights [H, W, K], logits [H, W, K])``; weights are ``softmax(logits / tau)`` over experts."""
        logits = self.logits(x)
        # over the experts as [K, H, W]: a softmax along a contiguous pixel axis, several times faster
        # on the CPU than over a last axis of size K
        w = torch.softmax(logits.permute(2, 0, 1).contiguous() / self.temperature, dim=0)
        return w.permute(1, 2, 0), logits

