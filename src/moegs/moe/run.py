"""Training a mixture: configuration, the stage-2/3 loop, checkpoints, and the run API.

Stage 1 trains each expert alone (``moegs train --expert NAME``). Stage 2
(``MoEConfig.steps``) freezes the experts and trains the gates and the router
on the blended image's L1 + D-SSIM. Stage 3 (``MoEConfig.joint_steps``,
optional) unfreezes the experts at a reduced learning rate and adds a
per-expert reconstruction term weighted by the (detached) routing weights, so
each expert keeps being judged on its own where it is responsible and does not
drift into a part that only makes sense blended.

The loop reuses the single-expert trainer's pieces (:class:`Optimization`,
:func:`photometric_loss`, :func:`sample_view`), so views are drawn in the same
stateless order and a resumed run reproduces an uninterrupted one.

Design choices against the ways a mixture fails:

- *Router collapse / bad start*: the router starts from a prior that puts
  ``prior_weight`` on the expert with the lowest photometric loss on a few
  training views (decoder/logit bias, or the gates' initial values), with a
  zero-initialised decoder output layer; training can only leave that blend
  where the blended loss says so. ``prior_weight <= 1/K`` starts uniform.
- *Train/eval mismatch*: one normalisation (temperature softmax) in
  :class:`~moegs.moe.router.Router`, used by training and evaluation alike;
  the temperature (annealed log-linearly from ``temperature`` to
  ``temperature_final`` over stage 2 when the latter is set) is a buffer saved
  with the router, so evaluation uses the last value trained with.
- *Load balancing* is available (``balance_weight``, a KL of the frame's mean
  usage to uniform) but off by default: the experts are complete models, and
  forcing usage onto a worse one costs quality; collapse onto the best expert
  is the safe failure mode, not a bad one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import io
from ..data import Scene, load_scene
from ..errors import ConfigError
from ..eval import evaluate_expert
from ..train import distributed as dist
from ..train.checkpoint import load_checkpoint, expert_from_payload
from ..train.config import to_dict
from ..train.run import scene_record
from ..train.loop import open_run_dir
from ..train.trainer import resolve_device
from .build import build_mixture, expert_meta
from .checkpoint import load_mixture
from .config import MoEConfig
from .evaluate import evaluate_mixture
from .trainer import MixtureTrainer

__all__ = ["train_mixture"]


def train_mixture(expert_ckpts: list[str | Path], data: str | Path | Scene, config: MoEConfig,
                  run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a mixture of the experts in ``expert_ckpts`` on ``data`` into ``run_dir``; returns the summary
    (also in ``summary.json``; test metrics of the mixture and of each expert in ``eval.json``).

    With ``resume``, continues from ``run_dir/checkpoints/last.pt`` when it exists, provided it was trained
    over the same expert checkpoints (same order, same file contents).
    """
    config.check()
    if not 2 <= len(expert_ckpts) <= 5:
        raise ConfigError(f"a mixture takes 2 to 5 experts, got {len(expert_ckpts)}")
    if dist.requested_world_size() > 1:
        raise ConfigError("mixture training runs in one process; start train-moe without torchrun "
                          f"(WORLD_SIZE={dist.requested_world_size()})")
    run_dir = Path(run_dir)
    scene = data if isinstance(data, Scene) else load_scene(data, config.data)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    last = run_dir / "checkpoints" / "last.pt"
    if resume and last.exists():
        mixture, payload = load_mixture(last, device)
        if payload["config"]["router"] != config.router or len(payload["experts"]) != len(expert_ckpts):
            raise ConfigError(f"{last}: holds a {payload['config']['router']!r} mixture of "
                              f"{len(payload['experts'])} experts, not {config.router!r} of {len(expert_ckpts)}")
        for p, meta in zip(expert_ckpts, payload["experts"]):
            if meta.get("digest") is not None and io.file_digest(p) != meta["digest"]:
                raise ConfigError(f"{last}: was trained over another {p} (the file has changed since); "
                                  "train into a new run directory")
        trainer = MixtureTrainer(mixture, scene, config, [
            {k: v for k, v in m.items() if k != "sh_degree"} for m in payload["experts"]], run_dir)
        trainer.load_state_dict(payload["trainer"])
        resumed = trainer.step
    else:
        experts, metas = [], []
        for p in expert_ckpts:
            payload = load_checkpoint(p)
            e = expert_from_payload(payload, p, config.experts.get(payload["expert"]))
            experts.append(e)
            metas.append(expert_meta(e, payload["scene_meta"], str(p), (payload.get("trainer") or {}).get("step", 0),
                                     io.file_digest(p)))
        mixture, info = build_mixture(experts, scene, config, device)
        trainer = MixtureTrainer(mixture, scene, config, metas, run_dir, info)
        resumed = None
    open_run_dir(run_dir, {"moe": to_dict(config), "experts": [str(p) for p in expert_ckpts],
                           "scene": scene_record(scene)}, resumed)
    records = trainer.train(progress=progress)
    summary: dict[str, Any] = {"router": config.router, "gate": config.gate, "experts": mixture.names,
                               "scene": scene.name, "steps": trainer.step, "train_time_s": round(trainer.elapsed, 2),
                               "final_train_psnr": records[-1]["psnr"] if records else None,
                               "prior_expert": trainer.info.get("prior_expert"),
                               "expert_train_losses": trainer.info.get("expert_train_losses")}
    if config.eval_at_end and scene.test_views:
        res = evaluate_mixture(mixture, scene, out_dir=run_dir / "renders" / "test")
        summary.update({f"test_{k}": v for k, v in res.items() if k != "per_view"})
        evals = {"mixture": res}
        if config.eval_experts:
            for name, e in zip(mixture.names, mixture.experts):
                evals[name] = evaluate_expert(e, scene, backend=config.backend)
            best = max((n for n in mixture.names), key=lambda n: evals[n]["psnr"])
            summary["expert_test_psnr"] = {n: evals[n]["psnr"] for n in mixture.names}
            summary["best_expert"] = best
            summary["gain_over_best_db"] = res["psnr"] - evals[best]["psnr"]
        io.write_json(run_dir / "eval.json", evals)
    io.write_json(run_dir / "summary.json", summary)
    return summary
