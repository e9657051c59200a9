"""Densification and pruning as a strategy object, decoupled from the models (as gsplat does).

A strategy sees only the per-Gaussian ParameterDict, its optimizers, its own
state dict and the rasterizer's ``meta`` of the step; any expert whose
``splats`` hold ``means``, ``scales``, ``quats`` and ``opacities`` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .distributed import all_reduce_

__all__ = ["DefaultStrategy"]


@dataclass
class DefaultStrategy:
    """3DGS's adaptive density control (Kerbl et al. 2023).

    Screen-space gradients are measured in NDC units (pixel gradient times half
    the image size), as in the original code, so ``grow_grad2d`` keeps its usual value.
    """

    # Prune Gaussians whose opacity falls below this.
    prune_opa: float = 0.005
    # Grow Gaussians whose mean screen-space gradient (NDC) exceeds this.
    grow_grad2d: float = 0.0002
    # Clone (small) vs split (large): max scale relative to the scene extent.
    grow_scale3d: float = 0.01
    # Prune Gaussians larger than this fraction of the scene extent (after the first reset).
    prune_scale3d: float = 0.1
    # Prune Gaussians whose screen radius exceeds this many pixels (after the first reset; 0 disables).
    prune_radius2d: float = 0.0
    # Densify only within [refine_start_iter, refine_stop_iter), every refine_every steps.
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    # Reset opacities to reset_value every reset_every steps (0 disables).
    reset_every: int = 3000
    reset_value: float = 0.01
    # Stop growing beyond this many Gaussians (keeps CPU budgets bounded; 0 = unlimited).
    max_gaussians: int = 0

    def initialize_state(self, scene_scale: float = 1.0) -> dict:
        return {"grad2d": None, "count": None, "max_radii": None, "scene_scale": float(scene_scale)}

    def check_sanity(self, params: nn.ParameterDict, optimizers: dict) -> None:
        for k in ("means", "scales", "quats", "opacities"):
            if k not in params:
                raise ValueError(f"strategy needs a per-Gaussian parameter {k!r}")
        for k, p in params.items():  # non-trainable per-Gaussian state (flags) needs no optimizer
            if k not in optimizers and p.requires_grad:
                raise ValueError(f"per-Gaussian parameter {k!r} has no optimizer")

    def step_pre_backward(self, params, optimizers, state: dict, step: int, info: dict) -> None:
        info["means2d"].retain_grad()

    @torch.no_grad()
    def step_post_backward(self, params: nn.ParameterDict, optimizers: dict, state: dict, step: int,
                           info: dict) -> dict:
        """Accumulate statistics and densify/prune/reset when due. Returns counts of what changed."""
        report = {}
        if step >= self.refine_stop_iter:
            return report
        self._accumulate(params, state, info)
        if step > self.refine_start_iter and step % self.refine_every == 0:
            report.update(self._grow(params, optimizers, state))
            report.update(self._prune(params, optimizers, state, step))
            state["grad2d"].zero_()
            state["count"].zero_()
            state["max_radii"].zero_()
        if self.reset_every > 0 and step % self.reset_every == 0 and step > 0:
            ops.reset_opacity(params, optimizers, 2.0 * self.reset_value)
        return report

    def _accumulate(self, params, state: dict, info: dict) -> None:
        n = params["means"].shape[0]
        if state["grad2d"] is None or state["grad2d"].shape[0] != n:
            dev = params["means"].device
            state["grad2d"] = torch.zeros(n, device=dev)
            state["count"] = torch.zeros(n, device=dev)
            state["max_radii"] = torch.zeros(n, device=dev)
        grad = info["means2d"].grad
        if grad is None:
            grad = torch.zeros(n, 2, device=params["means"].device)
        # To NDC-scaled pixels (one [N, 2] temporary; the cuda backend batches means2d as [1, N, 2]).
        grad = grad.detach().reshape(-1, 2) * grad.new_tensor([0.5 * info["width"], 0.5 * info["height"]])
        vis = (info["radii"] > 0).to(state["grad2d"])
        # Per-step increments, summed over ranks when training data-parallel.
        inc = torch.stack((grad.norm(dim=-1).to(state["grad2d"]) * vis, vis))
        all_reduce_(inc)
        state["grad2d"] += inc[0]
        state["count"] += inc[1]
        r = all_reduce_(info["radii"].to(state["max_radii"]) / max(info["width"], info["height"]), "max")
        torch.maximum(state["max_radii"], r, out=state["max_radii"])

    def _grow(self, params, optimizers, state: dict) -> dict:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        if self.max_gaussians > 0:
            room = max(0, self.max_gaussians - params["means"].shape[0])
            if int(high.sum()) > room:  # keep the strongest ones
                thr = grads.topk(room).values.min() if room > 0 else float("inf")
                high = high & (grads >= thr)
        small = torch.exp(params["scales"]).max(-1).values <= self.grow_scale3d * state["scene_scale"]
        dup = high & small
        ops.duplicate(params, optimizers, state, dup)
        n_after_dup = params["means"].shape[0]
        spl = torch.cat((high & ~small, high.new_zeros(n_after_dup - len(high))))
        ops.split(params, optimizers, state, spl)
        return {"cloned": int(dup.sum()), "split": int(spl.sum())}

    def _prune(self, params, optimizers, state: dict, step: int) -> dict:
        # An expert whose opacity varies in time sets ``max_opacity(params) -> [N]`` on its
        # ParameterDict: the largest opacity each Gaussian reaches over the scene's time span.
        max_opacity = getattr(params, "max_opacity", None)
        opacity = max_opacity(params) if max_opacity is not None else torch.sigmoid(params["opacities"])
        prune = opacity < self.prune_opa
        if step > self.reset_every > 0:
            prune |= torch.exp(params["scales"]).max(-1).values > self.prune_scale3d * state["scene_scale"]
            if self.prune_radius2d > 0:
                prune |= state["max_radii"] > self.prune_radius2d
        if int(prune.sum()) >= params["means"].shape[0]:  # never empty the model
            prune[torch.argmax(params["opacities"])] = False
        ops.remove(params, optimizers, state, prune)
        return {"pruned": int(prune.sum())}
