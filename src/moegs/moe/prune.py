"""Gate-aware pruning: drop the Gaussians whose gate stays low at every time.

A Gaussian whose gate is below ``threshold`` over the whole clip contributes
(almost) nothing to its expert's weight map; removing it shrinks the model.
For the linear gate the maximum over ``t`` in ``[0, 1]`` is at an endpoint, so
the test is exact; the mlp gate is checked at the scene's times. The expert's
``splats`` and the gate's per-Gaussian entries are cut with the same mask by
:mod:`moegs.train.ops` (``remove`` / ``update_params``), which also rewrite
optimiser moments when optimisers are given. Whether the blended image changes is measured, not
assumed (see the benchmark's PSNR before/after).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..train import ops
from .mixture import Mixture

__all__ = ["remove_gaussians", "gate_prune"]


@torch.no_grad()
def remove_gaussians(mixture: Mixture, k: int, mask: Tensor, optimizers: dict | None = None,
                     gate_optimizers: dict | None = None) -> None:
    """Remove the Gaussians ``mask`` (``[N_k]`` bool) from expert ``k`` and from its gate.

    ``optimizers`` / ``gate_optimizers`` map the expert's splat keys / the gate's per-Gaussian keys
    to their optimisers, whose moments are cut alike.
    """
    ops.remove(mixture.experts[k].splats, optimizers or {}, {}, mask)
    if len(mixture.gates):
        keep = torch.nonzero(~mask).squeeze(1)
        ops.update_params(mixture.gates[k].per_gaussian, gate_optimizers or {}, lambda _, p: p[keep],
                          lambda _, m: m[keep])


@torch.no_grad()
def gate_prune(mixture: Mixture, threshold: float = 0.05, times: list[float] | None = None) -> dict:
    """Remove from every expert the Gaussians whose gate stays below ``threshold`` at all times.

    Args:
        mixture: a mixture whose router uses Gaussian gates.
        threshold: gate value in ``(0, 1)`` under which a Gaussian counts as unused.
        times: times at which gates without a closed-form maximum are checked (default 17 in ``[0, 1]``).

    Returns:
        ``{"before": [K], "removed": [K], "after": [K]}`` Gaussian counts per expert.
    """
    if not len(mixture.gates):
        raise ValueError(f"the {mixture.router.kind!r} router has no Gaussian gates to prune by")
    times = times if times is not None else torch.linspace(0, 1, 17).tolist()
    before, removed = [], []
    for k, (expert, gate) in enumerate(zip(mixture.experts, mixture.gates)):
        n = expert.splats["means"].shape[0]
        mask = gate.max_over_time(expert, times) < threshold
        if int(mask.sum()) == n:  # never empty an expert: keep its most-used Gaussian
            mask[gate.max_over_time(expert, times).argmax()] = False
        remove_gaussians(mixture, k, mask)
        before.append(n)
        removed.append(int(mask.sum()))
    return {"before": before, "removed": removed, "after": [b - r for b, r in zip(before, removed)]}
