"""Optimisation: Adam per parameter group with 3DGS's log-linear learning-rate decay.

Per-Gaussian groups are keyed exactly like an expert's ``splats`` so that
densification (:mod:`moegs.train.ops`) rewrites their moments; each group is its
own ``torch.optim.Adam`` for that reason. Adam runs its fused kernel (one op per
tensor instead of a dozen element-wise ops) wherever torch offers it for the
parameters' device and dtype.
"""

from __future__ import annotations

import math

import torch

from ..experts import ParamGroup

__all__ = ["Optimization", "make_adam"]


def make_adam(params: list, lr: float, name: str) -> torch.optim.Adam:
    """Adam (eps 1e-15, as 3DGS) over ``params``, fused when every tensor supports it."""
    fused = all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                and p.device.type in ("cpu", "cuda") for p in params) and bool(params)
    return torch.optim.Adam([{"params": params, "lr": lr, "name": name}], eps=1e-15, fused=fused)


class Optimization:
    """One Adam per :class:`ParamGroup`, learning rates set per step by :meth:`set_step`.

    Args:
        groups: ``name -> ParamGroup``.
        max_steps: steps over which ``lr`` decays to ``lr_final`` (after each group's ``delay_steps``).
    """

    def __init__(self, groups: dict[str, ParamGroup], max_steps: int) -> None:
        self.groups = groups
        self.max_steps = max(1, max_steps)
        self.optimizers: dict[str, torch.optim.Optimizer] = {k: make_adam(g.params, g.lr, k) for k, g in groups.items()}

    def lr_at(self, key: str, step: int) -> float:
        g = self.groups[key]
        if g.lr_final is None or step < g.delay_steps:
            return g.lr
        t = min(1.0, (step - g.delay_steps) / max(1, self.max_steps - g.delay_steps))
        return math.exp((1 - t) * math.log(g.lr) + t * math.log(g.lr_final))

    def set_step(self, step: int) -> None:
        for k, opt in self.optimizers.items():
            for pg in opt.param_groups:
                pg["lr"] = self.lr_at(k, step)

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
