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

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Scene, View, load_scene
from ..data.config import DataConfig
from ..errors import CheckpointError, ConfigError
from ..eval import evaluate_expert, evaluate_renderer
from ..eval.metrics import psnr
from ..experts import ParamGroup
from ..train.checkpoint import atomic_torch_save, expert_from_payload, load_checkpoint, load_expert
from ..train.config import to_dict
from ..train.run import write_json
from ..train.trainer import Optimization, photometric_loss, resolve_device, sample_view
from .gates import GateKind, build_gate
from .mixture import Mixture
from .router import GATED, ROUTERS, Router, RouterKind, prior_logits

__all__ = ["MoEConfig", "MixtureTrainer", "FORMAT", "build_mixture", "expert_meta", "evaluate_mixture",
           "save_mixture", "load_mixture", "train_mixture"]

FORMAT = "moegs-mixture/1"


@dataclass
class MoEConfig:
    """A mixture of experts trained on one scene (stages 2 and 3)."""

    # Router variant: uniform, image, pixel_rgb, gates or full (see moegs.moe.router).
    router: RouterKind = "full"
    # Gaussian gate: linear (static logit + linear-in-time term) or mlp (network of position, time, features).
    gate: GateKind = "linear"
    # How the scene is read.
    data: DataConfig = field(default_factory=DataConfig)
    # Stage 2 steps (experts frozen; one view per step).
    steps: int = 1500
    # Stage 3 steps (joint fine-tuning of experts and router); 0 skips stage 3.
    joint_steps: int = 0
    # Learning rate of the router (decoder or image logits), decaying log-linearly to lr_router_final.
    lr_router: float = 2e-3
    lr_router_final: float | None = 2e-4
    # Learning rate of the per-Gaussian gate parameters.
    lr_gates: float = 0.05
    # Learning rate of the mlp gate's network.
    lr_gate_net: float = 1e-3
    # Stage 3: the experts' own learning rates are multiplied by this.
    joint_lr_scale: float = 0.1
    # Stage 3: weight of the per-expert reconstruction term sum_k mean(w_k * |I_k - I_gt|) (w_k detached).
    expert_loss_weight: float = 0.1
    # Softmax temperature over experts; annealed log-linearly to temperature_final over stage 2 when set.
    temperature: float = 1.0
    temperature_final: float | None = None
    # Initial weight of the expert with the lowest training loss (<= 1/K: start uniform).
    prior_weight: float = 0.6
    # Training views (evenly spaced) on which the experts are compared for that prior.
    prior_views: int = 8
    # Weight of the load-balancing loss KL(mean usage || uniform); 0 disables.
    balance_weight: float = 0.0
    # Weight of the D-SSIM term: loss = (1 - l) * L1 + l * (1 - SSIM).
    ssim_lambda: float = 0.2
    # Pixel decoder: hidden width and number of hidden 1x1 layers.
    hidden: int = 32
    layers: int = 2
    # Fourier frequencies of the time encoding (decoder and mlp gate).
    time_freqs: int = 2
    # mlp gate: per-Gaussian feature size and hidden width.
    gate_feature_dim: int = 8
    gate_hidden: int = 32
    # Write a checkpoint every this many steps (and at the end).
    checkpoint_every: int = 500
    # Log training metrics every this many steps.
    log_every: int = 25
    # Random seed (view order, gate network initialisation).
    seed: int = 0
    # Rasterizer backend: auto, cpu, torch or cuda.
    backend: str = "auto"
    # Device: auto (cuda if available), cpu or cuda.
    device: str = "auto"
    # Evaluate the mixture (and, with eval_experts, each expert alone) on the test views at the end.
    eval_at_end: bool = True
    eval_experts: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` on values no run can use."""
        if self.router not in ROUTERS:
            raise ConfigError(f"unknown router {self.router!r}; choose from {', '.join(ROUTERS)}")
        if self.gate not in ("linear", "mlp"):
            raise ConfigError(f"unknown gate {self.gate!r}; choose from linear, mlp")
        if self.steps < 0 or self.joint_steps < 0:
            raise ConfigError("steps and joint_steps must be >= 0")
        if self.temperature <= 0 or (self.temperature_final is not None and self.temperature_final <= 0):
            raise ConfigError("temperatures must be positive")


def expert_meta(expert: nn.Module, scene_meta: dict, source: str | None = None, steps: int = 0) -> dict:
    """What a mixture checkpoint keeps of an expert besides its weights (enough to rebuild it).

    ``scene_meta`` holds ``extent`` and ``times``; ``steps`` is how long it was trained alone.
    """
    return {"expert": expert.name, "expert_config": dataclasses.asdict(expert.config),
            "scene_meta": {"extent": float(scene_meta["extent"]), "times": [float(t) for t in scene_meta["times"]]},
            "source": source, "steps": int(steps)}


def _spaced(views: list[View], n: int) -> list[View]:
    if n >= len(views):
        return list(views)
    return [views[round(i * (len(views) - 1) / max(1, n - 1))] for i in range(n)]


@torch.no_grad()
def _expert_losses(experts: list[nn.Module], scene: Scene, views: list[View], cfg: MoEConfig,
                   device: torch.device) -> list[float]:
    bg = scene.background.to(device)
    out = []
    for e in experts:
        total = 0.0
        for v in views:
            img = e.gaussians_at(v.time).render(v.camera.to(device), background=bg, backend=cfg.backend).color
            total += float(photometric_loss(img, scene.image(v).to(device), cfg.ssim_lambda))
        out.append(total / max(1, len(views)))
    return out


def build_mixture(experts: list[nn.Module], scene: Scene, config: MoEConfig,
                  device: torch.device | None = None) -> tuple[Mixture, dict]:
    """A fresh mixture of ``experts`` for ``scene``, its router started from the best-expert prior.

    Returns ``(mixture, info)`` with ``info`` = ``{"expert_train_losses": [K], "prior_expert": k | None}``.
    """
    config.check()
    device = device or resolve_device(config.device)
    K = len(experts)
    for e in experts:
        e.to(device)
    losses = (_expert_losses(experts, scene, _spaced(scene.train_views, config.prior_views), config, device)
              if config.router != "uniform" and config.prior_weight > 1.0 / K else [])
    best = min(range(K), key=lambda k: losses[k]) if losses else None
    prior = prior_logits(K, best, config.prior_weight)
    gates = None
    if config.router in GATED:
        # "gates" normalises the gate maps directly: its prior is carried by the gates' initial values.
        p = torch.softmax(prior, 0) if config.router == "gates" else torch.full((K,), 0.5)
        gates = [build_gate(config.gate, e.splats["means"].shape[0], extent=scene.extent, init=float(p[k]),
                            feature_dim=config.gate_feature_dim, hidden=config.gate_hidden,
                            time_freqs=config.time_freqs) for k, e in enumerate(experts)]
    router = Router(config.router, K, temperature=config.temperature, prior=prior * config.temperature,
                    hidden=config.hidden, layers=config.layers, time_freqs=config.time_freqs)
    mixture = Mixture(experts, router, gates, scene.background, config.backend).to(device)
    return mixture, {"expert_train_losses": losses, "prior_expert": best}


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
        return sample_view(self.scene.train_views, self.cfg.seed, step)

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
        rec = {"loss": float(loss.detach()), "psnr": psnr(out.color, target), "stage": stage}
        rec.update({f"usage_{k}": float(u) for k, u in enumerate(usage)})
        rec.update(terms)
        return rec

    def train(self, progress: bool = True) -> list[dict]:
        """Run to ``steps + joint_steps``; returns the logged records (also appended to metrics.jsonl)."""
        from tqdm.auto import tqdm

        records: list[dict] = []
        window: list[dict] = []
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, desc="train mixture",
                   dynamic_ncols=True)
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            window.append(self.train_step())
            self.elapsed += time.perf_counter() - t0
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                keys = {k for r in window for k in r if k != "stage"}
                rec = {k: float(np.mean([r[k] for r in window if k in r])) for k in sorted(keys)}
                rec.update(step=self.step, stage=window[-1]["stage"], elapsed_s=round(self.elapsed, 3))
                window = []
                records.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
                if self.run_dir is not None:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if self.run_dir is not None and (self.step % self.cfg.checkpoint_every == 0
                                             or self.step == self.total_steps):
                self.save_checkpoint()
        bar.close()
        if self.run_dir is not None and not (self.run_dir / "checkpoints" / "last.pt").exists():
            self.save_checkpoint()  # a run without steps (the uniform router) still leaves its mixture
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


def save_mixture(path: str | Path, mixture: Mixture, config: MoEConfig, expert_metas: list[dict], *,
                 trainer_state: dict | None = None) -> None:
    """Write ``mixture`` (experts, gates, router) and optionally the trainer's state to ``path`` atomically.

    The experts' weights are always included (they may have been fine-tuned or pruned), so a
    mixture checkpoint is self-contained.
    """
    metas = [dict(m, sh_degree=int(e.sh_degree)) for m, e in zip(expert_metas, mixture.experts)]
    payload = {"format": FORMAT, "config": to_dict(config), "experts": metas,
               "model": {k: v.detach().cpu() for k, v in mixture.state_dict().items()},
               "trainer": trainer_state}
    atomic_torch_save(payload, path)


def _config_from(d: dict) -> MoEConfig:
    from ..train.config import from_dict

    return from_dict(MoEConfig, d)


def load_mixture(path: str | Path, device: torch.device | str = "cpu") -> tuple[Mixture, dict]:
    """``(mixture, payload)`` from a checkpoint written by :func:`save_mixture`; :class:`CheckpointError`
    when the file is missing, corrupt, of another kind or does not fit its own config."""
    payload = load_checkpoint(path, FORMAT)
    try:
        config = _config_from(payload["config"])
        model: dict = payload["model"]
        experts = []
        for k, meta in enumerate(payload["experts"]):
            prefix = f"experts.{k}."
            sub = {n[len(prefix):]: v for n, v in model.items() if n.startswith(prefix)}
            experts.append(expert_from_payload(dict(meta, model=sub), path))
        K = len(experts)
        gates = None
        if config.router in GATED:
            gates = [build_gate(config.gate, e.splats["means"].shape[0], extent=payload["experts"][k]["scene_meta"]
                                ["extent"], feature_dim=config.gate_feature_dim, hidden=config.gate_hidden,
                                time_freqs=config.time_freqs) for k, e in enumerate(experts)]
        router = Router(config.router, K, temperature=config.temperature, hidden=config.hidden,
                        layers=config.layers, time_freqs=config.time_freqs)
        mixture = Mixture(experts, router, gates, model["background"], config.backend)
        mixture.load_state_dict(model)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"mixture does not fit its checkpoint ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return mixture.to(device), payload


@torch.no_grad()
def evaluate_mixture(mixture: Mixture, scene: Scene, views: list[View] | None = None, *,
                     out_dir: Path | None = None, use_lpips: bool = True) -> dict:
    """PSNR/SSIM/LPIPS/FPS of the blended render on ``views`` (default: test views), plus
    ``usage`` ``[K]`` (mean weight per expert) and ``argmax_share`` ``[K]`` (share of pixels each expert wins)."""
    views = scene.test_views if views is None else views
    usage = torch.zeros(mixture.num_experts)
    wins = torch.zeros(mixture.num_experts)

    def render(v: View) -> Tensor:
        out = mixture.render(v)
        w = out.weights.detach().cpu()
        usage.add_(w.mean(dim=(0, 1)) / len(views))
        wins.add_(torch.bincount(w.argmax(-1).flatten(), minlength=w.shape[-1]).float() / w[..., 0].numel()
                  / len(views))
        return out.color

    mixture.eval()
    try:
        res = evaluate_renderer(render, scene, views, out_dir, use_lpips)
    finally:
        mixture.train()
    # evaluate_renderer renders every view once, so usage covers each view exactly once.
    res["usage"] = usage.tolist()
    res["argmax_share"] = wins.tolist()
    res["num_gaussians"] = [int(e.splats["means"].shape[0]) for e in mixture.experts]
    return res


def train_mixture(expert_ckpts: list[str | Path], data: str | Path | Scene, config: MoEConfig,
                  run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a mixture of the experts in ``expert_ckpts`` on ``data`` into ``run_dir``; returns the summary
    (also in ``summary.json``; test metrics of the mixture and of each expert in ``eval.json``).

    With ``resume``, continues from ``run_dir/checkpoints/last.pt`` when it exists.
    """
    config.check()
    if not 2 <= len(expert_ckpts) <= 5:
        raise ConfigError(f"a mixture takes 2 to 5 experts, got {len(expert_ckpts)}")
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
        trainer = MixtureTrainer(mixture, scene, config, [
            {k: v for k, v in m.items() if k != "sh_degree"} for m in payload["experts"]], run_dir)
        trainer.load_state_dict(payload["trainer"])
    else:
        experts, metas = [], []
        for p in expert_ckpts:
            e, pl = load_expert(p)
            experts.append(e)
            metas.append(expert_meta(e, pl["scene_meta"], str(p), (pl.get("trainer") or {}).get("step", 0)))
        mixture, info = build_mixture(experts, scene, config, device)
        trainer = MixtureTrainer(mixture, scene, config, metas, run_dir, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"moe": to_dict(config), "experts": [str(p) for p in expert_ckpts],
                                         "scene": {"name": scene.name, "format": scene.format,
                                                   "train_views": len(scene.train_views),
                                                   "test_views": len(scene.test_views)}})
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
        write_json(run_dir / "eval.json", evals)
    write_json(run_dir / "summary.json", summary)
    return summary
