"""The training loop shared by every expert: sample a view, render, loss, densify, step.

Thin by design (gsplat's Runner): the model is an :class:`Expert`, densification a
strategy object, the data a :class:`Scene`; this file only wires them and
handles schedules, logging and checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import Scene, View
from ..eval.metrics import psnr
from ..experts import Expert, render_expert
from . import checkpoint as ckpt
from . import distributed as dist
from .config import TrainConfig
from .loop import run_loop
from .loss import photometric_loss
from .optim import Optimization
from .sampler import sample_view

__all__ = ["DEVICES", "Trainer", "resolve_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Trains one expert on one scene and writes a run directory.

    Run directory: ``config.json`` (resolved), ``metrics.jsonl`` (one JSON object
    per log step), ``checkpoints/step_<step, 6 digits>.pt`` and ``checkpoints/last.pt``.
    """

    def __init__(self, expert: Expert, scene: Scene, config: TrainConfig, run_dir: str | Path | None = None,
                 device: torch.device | None = None) -> None:
        self.expert = expert
        self.scene = scene
        self.cfg = config
        self.device = device or resolve_device(config.device)
        self.expert.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.opt = Optimization(expert.param_groups(), config.steps)
        self.strategy = config.strategy
        self.strategy.check_sanity(expert.splats, self.opt.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene.extent)
        self.step = 0
        self.elapsed = 0.0
        self.background = scene.background.to(self.device)

    # ------------------------------------------------------------ sampling
    def view_for_step(self, step: int) -> View:
        """The view of ``step`` (each rank of a data-parallel run takes its own sample of the epoch)."""
        return sample_view(self.scene.train_views, self.cfg.seed, step * dist.world_size() + dist.rank())

    # --------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        step = self.step
        expert = self.expert
        expert.on_step(step)
        expert.sh_degree = min(expert.max_sh_degree, step // max(1, self.cfg.sh_increase_every))
        self.opt.set_step(step)
        view = self.view_for_step(step)
        camera = view.camera.to(self.device)
        target = self.scene.image(view).to(self.device)

        out = render_expert(expert, camera, view.time, background=self.background, backend=self.cfg.backend)
        loss = self.image_loss(out.color, view, target)
        regs = expert.regularization(step)
        for v in regs.values():
            loss = loss + v
        self.strategy.step_pre_backward(expert.splats, self.opt.optimizers, self.strategy_state, step, out.meta)
        loss.backward()
        dist.average_gradients(expert.parameters())
        report = self.strategy.step_post_backward(expert.splats, self.opt.optimizers, self.strategy_state, step,
                                                  out.meta)
        self.opt.step()
        self.opt.zero_grad()
        self.step += 1
        return {"loss": loss.item(), "psnr": psnr(out.color, target), **{k: v.item() for k, v in regs.items()},
                **report}

    def image_loss(self, render: Tensor, view: View, target: Tensor) -> Tensor:
        """The step's image loss of ``render`` ``[H, W, 3]`` against ``target`` ``[H, W, 3]`` (the image of
        ``view``): L1 + D-SSIM. Subclasses change what an expert is fitted to (see :mod:`moegs.moe.distill`)."""
        return photometric_loss(render, target, self.cfg.ssim_lambda)

    # ----------------------------------------------------------- the loop
    def train(self, progress: bool = True, on_log: Any = None) -> list[dict]:
        """Run until ``config.steps``; returns the logged records (also appended to metrics.jsonl)."""
        return run_loop(self, self.cfg.steps, run_dir=self.run_dir, log_every=self.cfg.log_every,
                        checkpoint_every=self.cfg.checkpoint_every, desc=f"train {self.expert.name}",
                        progress=progress, on_log=on_log,
                        log_fields=lambda: {"num_gaussians": int(self.expert.splats["means"].shape[0])})

    # -------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "optimizers": self.opt.state_dict(),
            "strategy_state": self.strategy_state,
            "torch_rng": torch.get_rng_state(),
        }

    def save_checkpoint(self) -> Path:
        assert self.run_dir is not None
        d = self.run_dir / "checkpoints"
        path = d / f"step_{self.step:06d}.pt"
        meta = {"extent": self.scene.extent, "times": self.scene.times, "path": self.scene.info.get("path")}
        for p in (path, d / "last.pt"):
            ckpt.save_expert(p, self.expert, self.cfg, scene_meta=meta, trainer_state=self.state_dict())
        return path

    def load_trainer_state(self, state: dict) -> None:
        """Resume from ``state`` (the ``trainer`` entry of a checkpoint; the expert is loaded separately)."""
        # Optimizers must track the (possibly resized) parameters of the loaded expert.
        self.opt = Optimization(self.expert.param_groups(), self.cfg.steps)
        self.opt.load_state_dict(state["optimizers"])
        self.strategy_state = state["strategy_state"]
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        torch.set_rng_state(state["torch_rng"])
