"""The stage-2/3 trainer of a mixture (the loop around it is :func:`moegs.train.loop.run_loop`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..data import Scene, View
from ..eval.metrics import psnr
from ..experts import ParamGroup
from ..train.loop import run_loop
from ..train.loss import photometric_loss
from ..train.optim import Optimization
from ..train.sampler import sample_view, sample_view_windowed
from .checkpoint import save_mixture
from .config import MoEConfig
from .mixture import Mixture

__all__ = ["MixtureTrainer"]


class MixtureTrainer:
    """Trains a mixture's gates and router (stage 2) and optionally experts too (stage 3).

    ``step`` counts both stages: ``[0, steps)`` is stage 2, ``[steps, steps + joint_steps)`` stage 3.
    Run directory: ``metrics.jsonl``, ``checkpoints/step_<step, 6 digits>.pt`` and ``checkpoints/last.pt``.
    """

    def __init__(self, mixture: Mixture, scene: Scene, config: MoEConfig, expert_metas: list[dict],
                 run_dir: str | Path | None = None, info: dict | None = None) -> None:
        config.check()
        self.mixture = mixture
        self.scene = scene
        self.cfg = config
        self.expert_metas = expert_metas
        self.info = info or {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = mixture.background.device
        self.step = 0
        self.elapsed = 0.0
        self.stage = 0
        self.opt: Optimization | None = None

    @property
    def total_steps(self) -> int:
        return self.cfg.steps + self.cfg.joint_steps

    def stage_of(self, step: int) -> int:
        return 2 if step < self.cfg.steps else 3

    def temperature_at(self, step: int) -> float:
        c = self.cfg
        if c.temperature_final is None:
            return c.temperature
        f = min(1.0, step / max(1, c.steps - 1))
        return math.exp((1 - f) * math.log(c.temperature) + f * math.log(c.temperature_final))

    def param_groups(self, stage: int) -> dict[str, ParamGroup]:
        """The optimiser groups of ``stage``: gates and router; in stage 3 also every expert's groups."""
        c, m = self.cfg, self.mixture
        groups: dict[str, ParamGroup] = {}
        router_params = list(m.router.parameters())
        if router_params:
            groups["router"] = ParamGroup(router_params, c.lr_router, c.lr_router_final)
        for k, g in enumerate(m.gates):
            groups.update(g.param_groups(f"gate{k}.", c.lr_gates, c.lr_gate_net))
        if stage == 3:
            for k, e in enumerate(m.experts):
                for name, g in e.param_groups().items():
                    groups[f"expert{k}.{name}"] = ParamGroup(
                        g.params, g.lr * c.joint_lr_scale,
                        None if g.lr_final is None else g.lr_final * c.joint_lr_scale)
        return groups

    def enter_stage(self, stage: int) -> None:
        """Freeze/unfreeze the experts and build the stage's optimisers."""
        self.mixture.set_experts_trainable(stage == 3)
        n = self.cfg.steps if stage == 2 else self.cfg.joint_steps
        self.opt = Optimization(self.param_groups(stage), n)
        self.stage = stage

    def view_for_step(self, step: int) -> View:
        """Stage 2 in windows of views when ``stage2_window`` is set (cache hits), epochs otherwise."""
        c = self.cfg
        if c.stage2_window > 0 and c.render_cache_mb > 0 and self.stage_of(step) == 2:
            return sample_view_windowed(self.scene.train_views, c.seed, step, c.stage2_window, c.stage2_repeats)
        return sample_view(self.scene.train_views, c.seed, step)

    def loss(self, out, target: Tensor, stage: int, step: int) -> tuple[Tensor, dict]:
        """The step's loss for a :class:`~moegs.moe.mixture.MixtureOutput` ``out`` and ``target`` ``[H, W, 3]``."""
        c, K = self.cfg, self.mixture.num_experts
        loss = photometric_loss(out.color, target, c.ssim_lambda)
        terms: dict[str, float] = {}
        if c.balance_weight > 0:
            usage = out.weights.mean(dim=(0, 1))  # [K]
            bal = (usage * (usage * K).clamp_min(1e-8).log()).sum()
            loss = loss + c.balance_weight * bal
            terms["balance"] = float(bal.detach())
        if c.tv_weight > 0:
            w = out.weights
            tv = (w[1:] - w[:-1]).abs().mean() + (w[:, 1:] - w[:, :-1]).abs().mean()
            loss = loss + c.tv_weight * tv
            terms["tv"] = float(tv.detach())
        if c.entropy_weight > 0:
            ent = -(out.weights * out.weights.clamp_min(1e-8).log()).sum(-1).mean()
            loss = loss + c.entropy_weight * ent
            terms["entropy"] = float(ent.detach())
        if stage == 3:
            if c.expert_loss_weight > 0:
                w = out.weights.detach().permute(2, 0, 1)[..., None]  # [K, H, W, 1]
                spec = (w * (out.expert_colors - target).abs()).mean(dim=(1, 2, 3)).sum()
                loss = loss + c.expert_loss_weight * spec
                terms["expert_term"] = float(spec.detach())
            for k, e in enumerate(self.mixture.experts):
                for v in e.regularization(self.expert_metas[k]["steps"] + step - c.steps).values():
                    loss = loss + v
        return loss, terms

    def train_step(self) -> dict:
        step = self.step
        stage = self.stage_of(step)
        if stage != self.stage:
            self.enter_stage(stage)
        self.opt.set_step(step if stage == 2 else step - self.cfg.steps)
        self.mixture.router.temperature.fill_(self.temperature_at(step))
        view = self.view_for_step(step)
        target = self.scene.image(view).to(self.device)
        out = self.mixture.render(view)
        loss, terms = self.loss(out, target, stage, step)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.step += 1
        usage = out.weights.detach().mean(dim=(0, 1))
        rec = {"loss": float(loss.detach()), "psnr": psnr(out.color, target)}
        rec.update({f"usage_{k}": float(u) for k, u in enumerate(usage)})
        rec.update(terms)
        return rec

    def train(self, progress: bool = True) -> list[dict]:
        """Run to ``steps + joint_steps``; returns the logged records (also appended to metrics.jsonl)."""
        records = run_loop(self, self.total_steps, run_dir=self.run_dir, log_every=self.cfg.log_every,
                           checkpoint_every=self.cfg.checkpoint_every, desc="train mixture", progress=progress,
                           log_fields=lambda: {"stage": self.stage})
        # Evaluation uses the temperature the last step trained with.
        self.mixture.router.temperature.fill_(self.temperature_at(max(0, self.total_steps - 1)))
        return records

    # -------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed_s": self.elapsed, "stage": self.stage,
                "optimizers": self.opt.state_dict() if self.opt is not None else None,
                "torch_rng": torch.get_rng_state(), "info": self.info}

    def load_state_dict(self, state: dict) -> None:
        """Resume from the ``trainer`` entry of a mixture checkpoint (the mixture is loaded separately)."""
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.info = state.get("info", self.info)
        if state["stage"] in (2, 3):
            self.enter_stage(int(state["stage"]))
            self.opt.load_state_dict(state["optimizers"])
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(self) -> Path:
        assert self.run_dir is not None
        d = self.run_dir / "checkpoints"
        path = d / f"step_{self.step:06d}.pt"
        for p in (path, d / "last.pt"):
            save_mixture(p, self.mixture, self.cfg, self.expert_metas, trainer_state=self.state_dict())
        return path
