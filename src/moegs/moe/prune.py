"""Gate-aware pruning: drop the Gaussians that contribute (almost) nothing to the blended image.

The contribution of Gaussian ``i`` of expert ``k`` to a view is
``c_i = sum_p w_k(p) T_i(p) alpha_i(p)``: its compositing weight in its expert's
image times the router's weight of that expert at the pixel, in pixels. It is
measured exactly and cheaply as the gradient of ``sum_p w_k(p) E_k(p)`` with
respect to a per-Gaussian channel of ones splatted into ``E_k``. A Gaussian
whose largest contribution over the sampled views and times is among the
smallest is removed, so the router's gates decide which Gaussians
matter: low-gated Gaussians of an expert that the router does not use in their
region go, while Gaussians that the router relies on stay whatever their own
gate. (Thresholding the gates alone is not enough: a low-gated Gaussian can still
form the colour of a pixel where its expert has weight.) The expert's ``splats``
and the gate's per-Gaussian entries are cut with the same mask by
:mod:`moegs.train.ops` (``remove`` / ``update_params``).

How much goes is set by ``keep``, the share of the summed contributions that the kept Gaussians
carry: the fewest Gaussians, largest contributions first, whose contributions add up to that share
stay. A share does not depend on the image size or the Gaussian count the way a threshold in pixels
does. On two mixtures of three 20k-Gaussian experts after stage 3, contributions over 24 training views
(``moegs pipeline`` runs, then ``moegs prune RUN/mixture --out DIR [--keep SHARE]``; ``prune.json``
gives the threshold a share comes to), 80 % is 1.14 px on the demo scene (160x120; 8.9k of 60k
Gaussians kept, 23.56 dB after fine-tuning, as unpruned) but 0.17 px on D-NeRF mutant at 100x100,
whose Gaussians cover fewer pixels (8.6k of 57.5k kept, 32.76 dB, 32.28 unpruned). There 1 px was a share
of 32 % for an earlier version's mixture (``--keep 0.32``): 1.1k Gaussians kept, 26.76 dB after
fine-tuning against 32.25 unpruned.

Pruning alone must stay gentle (97 %) to keep the image; :func:`prune_and_finetune` prunes harder
and then fine-tunes experts, gates and router jointly for a few hundred steps (stage 3 of
:class:`~moegs.moe.MixtureTrainer`), so that the remaining Gaussians take over the work of the removed
ones, as compact-3DGS methods fine-tune after pruning.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import Tensor

from ..data import Scene, View
from ..train import ops
from .build import spaced_views
from .config import MoEConfig
from .mixture import Mixture
from .trainer import MixtureTrainer

__all__ = ["DEFAULT_KEEP", "remove_gaussians", "contributions", "contribution_threshold", "gate_prune",
           "prune_and_finetune"]

# Share of the summed contributions the Gaussians kept by pruning alone carry. On a fresh demo's mixture
# (gates router, 3 experts, 160x120) 97 % keeps 23.8k of 60k Gaussians at 23.55 dB against 23.56 unpruned
# (PruneConfig's docstring gives the command).
DEFAULT_KEEP = 0.97


@torch.no_grad()
def remove_gaussians(mixture: Mixture, k: int, mask: Tensor, optimizers: dict | None = None,
                     gate_optimizers: dict | None = None) -> None:
    """Remove the Gaussians ``mask`` (``[N_k]`` bool) from expert ``k`` and from its gate.

    ``optimizers`` / ``gate_optimizers`` map the expert's splat keys / the gate's per-Gaussian keys
    to their optimisers, whose moments are cut alike.
    """
    ops.remove(mixture.experts[k].splats, optimizers or {}, {}, mask)
    mixture.clear_cache()
    if len(mixture.gates):
        keep = torch.nonzero(~mask).squeeze(1)
        ops.update_params(mixture.gates[k].per_gaussian, gate_optimizers or {}, lambda _, p: p[keep],
                          lambda _, m: m[keep])


def contributions(mixture: Mixture, views: list[View]) -> list[Tensor]:
    """``[N_k]`` per expert: each Gaussian's largest contribution (pixels) to the blended image over ``views``.

    One mixture render per view: the channel of ones rides along with the gates in the same pass.
    """
    sizes = [e.splats["means"].shape[0] for e in mixture.experts]
    out = [torch.zeros(n) for n in sizes]  # cpu: host-side maxima of the .cpu() contributions
    for v in views:
        with torch.enable_grad():  # callers may be in no_grad mode
            ones = torch.ones(sum(sizes), 1, device=mixture.background.device, requires_grad=True)
            r = mixture.render(v, extra=ones)
            used = (r.weights.detach().permute(2, 0, 1) * r.extra_maps[..., 0]).sum()  # sum_k sum_p w_k(p) E_k(p)
            (grad,) = torch.autograd.grad(used, ones)
        for k, c in enumerate(grad[:, 0].detach().cpu().split(sizes)):
            out[k] = torch.maximum(out[k], c)
    return out


def contribution_threshold(contrib: list[Tensor], keep: float) -> float:
    """The contribution (pixels) at and above which Gaussians carry ``keep`` of the summed contributions.

    Args:
        contrib: ``[N_k]`` per expert, from :func:`contributions`.
        keep: share in ``(0, 1]``; 1 keeps every Gaussian (threshold 0).

    Returns:
        The smallest contribution among the fewest Gaussians (largest first) whose contributions add up
        to ``keep`` of the total; 0 when ``keep`` is 1 or nothing contributes.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    c = torch.cat(contrib).double().sort(descending=True).values
    total = float(c.sum()) if c.numel() else 0.0
    if keep >= 1 or total <= 0:
        return 0.0
    k = int(torch.searchsorted(c.cumsum(0), keep * total))  # the first index whose running sum reaches it
    return float(c[min(k, c.numel() - 1)])


def gate_prune(mixture: Mixture, views: list[View], keep: float = DEFAULT_KEEP) -> dict:
    """Remove from every expert the Gaussians that contribute least to the blend of ``views``.

    Args:
        mixture: a trained mixture (any router: the weights decide, gates included).
        views: views (cameras at their times) over which contributions are measured, e.g. training views.
        keep: share of the summed contributions (each Gaussian's largest over ``views``) that the kept
            Gaussians carry (:func:`contribution_threshold`); 1 removes nothing.

    Returns:
        ``{"before": [K], "removed": [K], "after": [K]}`` Gaussian counts per expert, ``keep`` and
        ``threshold`` (the contribution in pixels under which Gaussians went).
    """
    contrib = contributions(mixture, views)
    threshold = contribution_threshold(contrib, keep)
    before, removed = [], []
    for k, c in enumerate(contrib):
        n = c.shape[0]
        mask = c < threshold
        if int(mask.sum()) == n:  # never empty an expert: keep its largest contributor
            mask[c.argmax()] = False
        remove_gaussians(mixture, k, mask)
        before.append(n)
        removed.append(int(mask.sum()))
    return {"before": before, "removed": removed, "after": [b - r for b, r in zip(before, removed)], "keep": keep,
            "threshold": threshold}


def prune_and_finetune(mixture: Mixture, scene: Scene, config: MoEConfig, expert_metas: list[dict], *,
                       progress: bool = False) -> dict:
    """Gate-prune ``mixture`` in place (``config.prune``), then fine-tune it jointly on ``scene``.

    Contributions are measured over ``config.prune.views`` evenly spaced training views; the
    fine-tuning is stage 3 of :class:`~moegs.moe.MixtureTrainer` for ``config.prune.steps`` steps with
    the experts' learning rates scaled by ``config.prune.lr_scale``, at the temperature the router
    ended its training with. The experts are frozen again afterwards.

    Args:
        mixture: a trained mixture (any router: its weights decide what goes).
        scene: the scene it was trained on.
        config: its :class:`~moegs.moe.MoEConfig` (training settings and ``prune``).
        expert_metas: the experts' metadata as in the mixture's checkpoint (``payload["experts"]``).

    Returns:
        :func:`gate_prune`'s counts, ``keep`` and ``threshold``, plus ``steps`` and ``finetune_s``.
    """
    p = config.prune
    p.check()
    counts = gate_prune(mixture, spaced_views(scene.train_views, p.views), p.keep)
    t0 = time.perf_counter()
    if p.steps > 0:
        final = config.temperature if config.temperature_final is None else config.temperature_final
        tune = dataclasses.replace(config, steps=0, joint_steps=p.steps, joint_lr_scale=p.lr_scale,
                                   temperature=final, temperature_final=None)
        was_training = mixture.training
        mixture.train()
        with torch.enable_grad():  # callers may be in no_grad mode
            MixtureTrainer(mixture, scene, tune, expert_metas).train(progress=progress)
        mixture.train(was_training)
        mixture.set_experts_trainable(False)
    return {**counts, "steps": p.steps, "finetune_s": round(time.perf_counter() - t0, 1)}
