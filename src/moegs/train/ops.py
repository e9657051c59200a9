"""Generic densification ops on a ParameterDict of per-Gaussian tensors.

Every op rewrites *all* entries of ``params`` (first dim ``N``), the Adam
moments of their optimizers (keyed like ``params``) and the per-Gaussian
tensors of the strategy state, so extra per-Gaussian parameters of an expert
follow clone/split/prune for free.
"""

from __future__ import annotations

from typing import Callable

import math

import torch
from torch import Tensor, nn

from ..render import quat_to_rotmat

__all__ = ["update_params", "duplicate", "split", "remove", "reset_opacity"]

Optimizers = dict[str, torch.optim.Optimizer]


@torch.no_grad()
def update_params(params: nn.ParameterDict, optimizers: Optimizers,
                  param_fn: Callable[[str, Tensor], Tensor], moment_fn: Callable[[str, Tensor], Tensor],
                  names: list[str] | None = None) -> None:
    """Replace each parameter ``p`` by ``param_fn(name, p)`` and each Adam moment ``m`` by ``moment_fn(name, m)``."""
    for name in names if names is not None else list(params.keys()):
        old = params[name]
        new = nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            continue
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p is not old:
                    continue
                state = opt.state.pop(p, None)
                group["params"][i] = new
                if state is not None:
                    for k, v in state.items():
                        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == old.shape[0]:
                            state[k] = moment_fn(name, v)
                    opt.state[new] = state


def _per_gaussian(state: dict, n: int) -> list[str]:
    return [k for k, v in state.items() if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n]


@torch.no_grad()
def duplicate(params: nn.ParameterDict, optimizers: Optimizers, state: dict, mask: Tensor) -> None:
    """Clone the Gaussians selected by ``mask`` (``[N]`` bool); clones start with zero moments."""
    n = params["means"].shape[0]
    sel = torch.nonzero(mask).squeeze(1)
    update_params(params, optimizers, lambda _, p: torch.cat((p, p[sel])),
                  lambda _, m: torch.cat((m, torch.zeros_like(m[sel]))))
    for k in _per_gaussian(state, n):
        state[k] = torch.cat((state[k], state[k][sel]))


@torch.no_grad()
def split(params: nn.ParameterDict, optimizers: Optimizers, state: dict, mask: Tensor,
          scale_shrink: float = 1.6) -> None:
    """Replace each selected Gaussian by two, sampled from it, with scales divided by ``scale_shrink``.

    ``means`` get samples from the Gaussian's distribution; ``scales`` shrink;
    every other entry (colour, rotation, expert state) is copied.

    An expert whose per-Gaussian state needs more than a copy (a temporal centre
    to resample, keyframes to move with the mean) sets a ``split_hook`` attribute
    on its ParameterDict: ``split_hook(parents, children) -> dict`` receives the
    selected Gaussians (``{name: [S, ...]}``) and the default children
    (``{name: [2S, ...]}``, first the S first-sample children, then the S second)
    and returns the entries it replaces (same shapes).
    """
    n = params["means"].shape[0]
    sel = torch.nonzero(mask).squeeze(1)
    rest = torch.nonzero(~mask).squeeze(1)
    scales = torch.exp(params["scales"][sel])
    rot = quat_to_rotmat(params["quats"][sel])
    offsets = torch.einsum("nij,nj,bnj->bni", rot, scales, torch.randn(2, len(sel), 3, device=scales.device))

    children = {}
    for name, p in params.items():
        if name == "means":
            children[name] = (p[sel][None] + offsets).reshape(-1, 3)
        elif name == "scales":
            children[name] = torch.log(scales / scale_shrink).repeat(2, 1)
        else:
            children[name] = p[sel].repeat((2,) + (1,) * (p.dim() - 1))
    hook = getattr(params, "split_hook", None)
    if hook is not None and len(sel) > 0:
        children.update(hook({name: p[sel] for name, p in params.items()}, dict(children)))

    def param_fn(name: str, p: Tensor) -> Tensor:
        return torch.cat((p[rest], children[name]))

    update_params(params, optimizers, param_fn,
                  lambda _, m: torch.cat((m[rest], m.new_zeros((2 * len(sel),) + m.shape[1:]))))
    for k in _per_gaussian(state, n):
        v = state[k]
        state[k] = torch.cat((v[rest], v[sel].repeat((2,) + (1,) * (v.dim() - 1))))


@torch.no_grad()
def remove(params: nn.ParameterDict, optimizers: Optimizers, state: dict, mask: Tensor) -> None:
    """Delete the Gaussians selected by ``mask``."""
    n = params["means"].shape[0]
    keep = torch.nonzero(~mask).squeeze(1)
    update_params(params, optimizers, lambda _, p: p[keep], lambda _, m: m[keep])
    for k in _per_gaussian(state, n):
        state[k] = state[k][keep]


@torch.no_grad()
def reset_opacity(params: nn.ParameterDict, optimizers: Optimizers, value: float) -> None:
    """Clamp opacities to at most ``value`` (probability) and zero their moments (3DGS's opacity reset)."""
    logit = math.log(value / (1.0 - value))
    update_params(params, optimizers, lambda _, p: p.clamp_max(logit), lambda _, m: torch.zeros_like(m),
                  names=["opacities"])
