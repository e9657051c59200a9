"""Distillation as published: a trained expert fine-tuned towards the mixture where the router does not use it.

The student is expert ``k`` of the mixture itself (a copy, not a fresh model). On every training
view the mixture's blend ``I_moe`` and the router's weight map ``G_k`` of expert ``k`` are computed
once (the teacher is frozen), and the student's render ``I_k`` is fitted with the router-masked loss

    L = lambda * L_img(G_k * I_k, G_k * I_gt) + (1 - lambda) * L_img((1 - G_k) * I_k, (1 - G_k) * I_moe)

(``L_img`` the L1 + D-SSIM of :func:`~moegs.train.loss.photometric_loss`): where the router trusts the
expert it keeps fitting the ground truth, elsewhere it learns from the blend. The baseline it is
compared with is the same expert fine-tuned for the same steps on the ground truth alone
(:func:`finetune`); both run the ordinary single-expert :class:`~moegs.train.Trainer` (one loop),
the distillation only swaps its image loss.

Fine-tuning keeps the expert's structure: no densification, no opacity reset, full SH degree from
the first steps.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import Scene, View
from ..eval import evaluate_expert
from ..train.config import TrainConfig
from ..train.loss import photometric_loss
from ..train.optim import Optimization
from ..train.trainer import Trainer
from .mixture import Mixture

__all__ = ["masked_distill_loss", "teacher_targets", "DistillTrainer", "finetune_config", "finetune", "distill"]


def masked_distill_loss(render: Tensor, target: Tensor, teacher: Tensor, gate: Tensor, lam: float,
                        ssim_lambda: float) -> Tensor:
    """The router-masked distillation loss (module docstring).

    Args:
        render: ``[H, W, 3]`` the student's render ``I_k``.
        target: ``[H, W, 3]`` the ground truth ``I_gt``.
        teacher: ``[H, W, 3]`` the mixture's blend ``I_moe``.
        gate: ``[H, W]`` the router's weight of expert ``k``, ``G_k`` in ``[0, 1]``.
        lam: ``lambda``, the share of the ground-truth term.
        ssim_lambda: D-SSIM weight of ``L_img``.
    """
    g = gate[..., None]
    return (lam * photometric_loss(g * render, g * target, ssim_lambda)
            + (1.0 - lam) * photometric_loss((1.0 - g) * render, (1.0 - g) * teacher, ssim_lambda))


@torch.no_grad()
def teacher_targets(mixture: Mixture, k: int, views: list[View]) -> list[tuple[Tensor, Tensor]]:
    """For each view: ``(I_moe [H, W, 3], G_k [H, W])``, the mixture's blend (clamped to ``[0, 1]``) and the
    router's weight of expert ``k``, on the CPU."""
    was_training = mixture.training
    mixture.eval()
    try:
        out = []
        for v in views:
            o = mixture.render(v)
            out.append((o.color.clamp(0, 1).cpu(), o.weights[..., k].cpu()))
    finally:
        mixture.train(was_training)
    return out


class DistillTrainer(Trainer):
    """The single-expert trainer with the router-masked loss against precomputed teacher targets.

    Args:
        teachers: one ``(I_moe, G_k)`` per training view of ``scene``, in order (:func:`teacher_targets`).
        lam: ``lambda`` of :func:`masked_distill_loss`.
    """

    def __init__(self, expert: nn.Module, scene: Scene, config: TrainConfig, teachers: list[tuple[Tensor, Tensor]],
                 lam: float = 0.5, run_dir: str | Path | None = None) -> None:
        if len(teachers) != len(scene.train_views):
            raise ValueError(f"{len(teachers)} teacher targets for {len(scene.train_views)} training views")
        super().__init__(expert, scene, config, run_dir)
        self.lam = float(lam)
        self._teacher = {id(v): t for v, t in zip(scene.train_views, teachers)}

    def image_loss(self, render: Tensor, view: View, target: Tensor) -> Tensor:
        moe, gate = self._teacher[id(view)]
        return masked_distill_loss(render, target, moe.to(render.device), gate.to(render.device), self.lam,
                                   self.cfg.ssim_lambda)


def finetune_config(config: TrainConfig | None, expert: nn.Module, steps: int) -> TrainConfig:
    """``config`` (default :class:`TrainConfig`) for fine-tuning ``expert`` for ``steps`` steps: its own
    expert config, no densification or opacity reset, SH degree raised every step, no end-of-run eval."""
    cfg = dataclasses.replace(config or TrainConfig(), expert=expert.config, steps=steps, sh_increase_every=1,
                              eval_at_end=False)
    cfg.strategy = dataclasses.replace(cfg.strategy, refine_stop_iter=0, reset_every=0)
    return cfg


def _run(trainer: Trainer, scene: Scene, progress: bool, lr_scale: float) -> dict:
    if lr_scale != 1.0:  # every learning rate of the expert (and its final value) times lr_scale
        trainer.opt = Optimization({n: dataclasses.replace(g, lr=g.lr * lr_scale, lr_final=None if g.lr_final is None
                                                           else g.lr_final * lr_scale)
                                    for n, g in trainer.expert.param_groups().items()}, trainer.cfg.steps)
    trainer.train(progress=progress)
    result = {"student": trainer.expert.name, "steps": trainer.cfg.steps, "train_time_s": round(trainer.elapsed, 2)}
    if scene.test_views:
        res = evaluate_expert(trainer.expert, scene, backend=trainer.cfg.backend)
        result.update({k: v for k, v in res.items() if k != "per_view"})
    return result


def _student(expert: nn.Module) -> nn.Module:
    student = copy.deepcopy(expert)  # a mixture's experts may be frozen: unfreeze what the expert optimises
    for g in student.param_groups().values():
        for p in g.params:
            p.requires_grad_(True)
    return student


def finetune(expert: nn.Module, scene: Scene, steps: int, config: TrainConfig | None = None, lr_scale: float = 1.0,
             run_dir: str | Path | None = None, progress: bool = False) -> tuple[nn.Module, dict]:
    """A copy of ``expert`` fine-tuned ``steps`` steps on the ground truth alone (the baseline of :func:`distill`,
    and of stage 3 with ``lr_scale = MoEConfig.joint_lr_scale``).

    Returns ``(student, result)`` as :func:`distill`.
    """
    cfg = finetune_config(config, expert, steps)
    torch.manual_seed(cfg.seed)
    return _student_result(Trainer(_student(expert), scene, cfg, run_dir), scene, progress, lr_scale)


def distill(mixture: Mixture, k: int, scene: Scene, steps: int, config: TrainConfig | None = None, lam: float = 0.5,
            lr_scale: float = 1.0, run_dir: str | Path | None = None,
            progress: bool = False) -> tuple[nn.Module, dict]:
    """Expert ``k`` of ``mixture`` (a copy) fine-tuned ``steps`` steps with the router-masked loss.

    Args:
        config: training configuration (its ``expert``, ``steps`` and densification are set by
            :func:`finetune_config`).
        lam: ``lambda``, the share of the ground-truth term.
        lr_scale: every learning rate of the expert is multiplied by this.
        run_dir: where the trainer writes metrics/checkpoints (none when ``None``).

    Returns:
        ``(student, result)``; ``result`` holds the student's test metrics against the real images
        (``psnr``, ``ssim``, ``lpips``, ``render_fps``, ``num_gaussians``, ...) and ``train_time_s``.
    """
    if not 0 <= k < mixture.num_experts:
        raise ValueError(f"expert {k} of a mixture of {mixture.num_experts}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    teachers = teacher_targets(mixture, k, scene.train_views)
    expert = mixture.experts[k]
    cfg = finetune_config(config, expert, steps)
    torch.manual_seed(cfg.seed)
    return _student_result(DistillTrainer(_student(expert), scene, cfg, teachers, lam, run_dir), scene, progress,
                           lr_scale)


def _student_result(trainer: Trainer, scene: Scene, progress: bool, lr_scale: float) -> tuple[nn.Module, dict]:
    if trainer.run_dir is not None:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
    return trainer.expert, _run(trainer, scene, progress, lr_scale)
