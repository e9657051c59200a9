"""Optimisation: one Adam over every parameter group, with 3DGS's log-linear learning-rate decay.

Each :class:`ParamGroup` is one param group (``"name"`` = its key) of a single ``torch.optim.Adam``, so a
step is one optimiser call whatever the number of groups (each separate optimiser costs its own Python
and dispatch overhead per step). Per-Gaussian groups are keyed exactly like an expert's ``splats``;
:attr:`Optimization.optimizers` maps every key to that optimiser, which is what densification
(:mod:`moegs.train.ops`) rewrites the moments through. Adam runs its fused kernel (one op per tensor
instead of a dozen element-wise ops) wherever torch offers it for the parameters' device and dtype.
"""

from __future__ import annotations

import math

import torch

from ..experts import ParamGroup

__all__ = ["Optimization", "make_adam"]


def make_adam(param_groups: list[dict]) -> torch.optim.Adam:
    """Adam (eps 1e-15, as 3DGS) over ``param_groups`` (dicts of ``params``, ``lr`` and ``name``), fused
    when every tensor supports it."""
    params = [p for g in param_groups for p in g["params"]]
    fused = all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                and p.device.type in ("cpu", "cuda") for p in params) and bool(params)
    return torch.optim.Adam(param_groups, eps=1e-15, fused=fused)


class Optimization:
    """One Adam, one param group per :class:`ParamGroup`, learning rates set per step by :meth:`set_step`.

    Args:
        groups: ``name -> ParamGroup``.
        max_steps: steps over which ``lr`` decays to ``lr_final`` (after each group's ``delay_steps``).
    """

    def __init__(self, groups: dict[str, ParamGroup], max_steps: int) -> None:
        self.groups = groups
        self.max_steps = max(1, max_steps)
        self.adam = make_adam([{"params": g.params, "lr": g.lr, "name": k} for k, g in groups.items()])
        self.optimizers: dict[str, torch.optim.Optimizer] = {k: self.adam for k in groups}

    def lr_at(self, key: str, step: int) -> float:
        g = self.groups[key]
        if g.lr_final is None or step < g.delay_steps:
            return g.lr
        t = min(1.0, (step - g.delay_steps) / max(1, self.max_steps - g.delay_steps))
        return math.exp((1 - t) * math.log(g.lr) + t * math.log(g.lr_final))

    def set_step(self, step: int) -> None:
        for pg in self.adam.param_groups:
            pg["lr"] = self.lr_at(pg["name"], step)

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.adam.step()

    def state_dict(self) -> dict:
        return {"adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, or the earlier layout of one Adam state per group name."""
        self.adam.load_state_dict(state["adam"] if "adam" in state else _merge_per_group(state, self.groups))


def _merge_per_group(state: dict, groups: dict[str, ParamGroup]) -> dict:
    """One Adam's state dict from ``name -> state dict`` of one single-group Adam per name (in ``groups``' order)."""
    merged: dict = {"state": {}, "param_groups": []}
    index = 0
    for name in groups:
        (group,) = state[name]["param_groups"]
        ids = []
        for i in group["params"]:
            if i in state[name]["state"]:
                merged["state"][index] = state[name]["state"][i]
            ids.append(index)
            index += 1
        merged["param_groups"].append({**group, "params": ids})
    return merged
