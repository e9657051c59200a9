"""The training loop shared by every expert: sample a view, render, loss, densify, step.

Thin by design (gsplat's Runner): the model is an :class:`Expert`, densification a
strategy object, the data a :class:`Scene`; this file only wires them and
handles schedules, logging and checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Scene, View
from ..eval.metrics import psnr, ssim
from ..experts import Expert, ParamGroup
from . import checkpoint as ckpt
from . import distributed as dist
from .config import TrainConfig

__all__ = ["Optimization", "photometric_loss", "sample_view", "view_order", "Trainer", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float) -> Tensor:
    """``(1 - l) * L1 + l * (1 - SSIM)`` of ``[H, W, 3]`` images (3DGS's loss)."""
    l1 = F.l1_loss(render, target)
    if ssim_lambda == 0:
        return l1
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(render, target))


def view_order(n: int, seed: int, epoch: int) -> Tensor:
    """A permutation of ``n`` views for ``epoch``: stateless, so a resumed run draws the same views."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def sample_view(views: list[View], seed: int, sample: int) -> View:
    """The ``sample``-th view drawn: epochs of shuffled ``views``, a new permutation per epoch."""
    n = len(views)
    return views[int(view_order(n, seed, sample // n)[sample % n])]


class Optimization:
    """Adam per parameter group with log-linear learning-rate decay (3DGS's schedule).

    Groups keyed like ``expert.splats`` are the ones densification rewrites.
    """

    def __init__(self, groups: dict[str, ParamGroup], max_steps: int) -> None:
        self.groups = groups
        self.max_steps = max(1, max_steps)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            k: torch.optim.Adam([{"params": g.params, "lr": g.lr, "name": k}], eps=1e-15) for k, g in groups.items()
        }

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


@dataclass
class StepResult:
    loss: float
    psnr: float
    extra: dict = field(default_factory=dict)


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
    def train_step(self) -> StepResult:
        step = self.step
        expert = self.expert
        expert.on_step(step)
        expert.sh_degree = min(expert.max_sh_degree, step // max(1, self.cfg.sh_increase_every))
        self.opt.set_step(step)
        view = self.view_for_step(step)
        camera = view.camera.to(self.device)
        target = self.scene.image(view).to(self.device)

        out = expert.gaussians_at(view.time).render(camera, background=self.background, backend=self.cfg.backend)
        loss = photometric_loss(out.color, target, self.cfg.ssim_lambda)
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
        extra = {k: v.item() for k, v in regs.items()}
        extra.update(report)
        return StepResult(loss=loss.item(), psnr=psnr(out.color, target), extra=extra)

    # ----------------------------------------------------------- the loop
    def train(self, progress: bool = True, on_log: Any = None) -> list[dict]:
        """Run until ``config.steps``; returns the logged records (also appended to metrics.jsonl)."""
        from tqdm.auto import tqdm

        records: list[dict] = []
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (progress and dist.is_main()), desc=f"train {self.expert.name}",
                   dynamic_ncols=True)
        window: list[StepResult] = []
        while self.step < self.cfg.steps:
            t0 = time.perf_counter()
            res = self.train_step()
            self.elapsed += time.perf_counter() - t0
            window.append(res)
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                rec = {"step": self.step, "loss": sum(r.loss for r in window) / len(window),
                       "psnr": sum(r.psnr for r in window) / len(window),
                       "num_gaussians": int(self.expert.splats["means"].shape[0]),
                       "elapsed_s": round(self.elapsed, 3)}
                rec.update(res.extra)
                window = []
                records.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}", n=rec["num_gaussians"])
                if self.run_dir is not None and dist.is_main():
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                if on_log is not None:
                    on_log(rec)
            if self.run_dir is not None and dist.is_main() and (
                self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps
            ):
                self.save_checkpoint()
        bar.close()
        return records

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
