"""Distillation: one expert (the student) trained on the mixture's renders of the training views.

The student is trained with the ordinary single-expert :class:`~moegs.train.Trainer`
on a copy of the scene whose training images are the mixture's (clamped)
renders; it is evaluated against the real test images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ArrayImage, FrameCache, Scene, View
from ..eval import evaluate_expert
from ..experts import build_expert
from ..train.config import TrainConfig
from ..train.run import scene_init
from ..train.trainer import Trainer
from .mixture import Mixture

__all__ = ["teacher_scene", "distill"]


@torch.no_grad()
def teacher_scene(mixture: Mixture, scene: Scene) -> Scene:
    """A copy of ``scene`` whose training images are the mixture's renders (test views unchanged)."""
    views = []
    for i, v in enumerate(scene.train_views):
        img = mixture.render(v).color.clamp(0, 1).cpu().numpy().astype(np.float32)
        views.append(View(v.camera, ArrayImage(("teacher", i), img), v.camera_id, v.frame))
    return dataclasses.replace(scene, train_views=views, cache=FrameCache(scene.cache.max_bytes))


def distill(mixture: Mixture, student_name: str, scene: Scene, steps: int, config: TrainConfig | None = None,
            run_dir: str | Path | None = None, progress: bool = False) -> tuple[nn.Module, dict]:
    """Train expert ``student_name`` for ``steps`` steps on the mixture's renders of ``scene``'s training views.

    Args:
        config: the student's training configuration (its ``expert`` and ``steps`` are overridden;
            default :class:`TrainConfig` without end-of-run evaluation).
        run_dir: where the student's trainer writes metrics/checkpoints (none when ``None``).

    Returns:
        ``(student, result)``; ``result`` holds the student's test metrics against the real images
        (``psnr``, ``ssim``, ``lpips``, ``render_fps``, ``num_gaussians``, ...) and ``train_time_s``.
    """
    cfg = config or TrainConfig(eval_at_end=False)
    cfg = dataclasses.replace(cfg, expert=cfg.expert if cfg.expert.name == student_name else student_name, steps=steps)
    teacher = teacher_scene(mixture, scene)
    torch.manual_seed(cfg.seed)
    student = build_expert(cfg.expert, scene_init(scene))
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(student, teacher, cfg, run_dir)
    trainer.train(progress=progress)
    result = {"student": student_name, "steps": steps, "train_time_s": round(trainer.elapsed, 2)}
    if scene.test_views:
        res = evaluate_expert(student, scene, backend=cfg.backend)
        result.update({k: v for k, v in res.items() if k != "per_view"})
    return student, result
