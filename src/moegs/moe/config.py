"""Configuration of a mixture run (stages 2 and 3): one dataclass used by the CLI and by Python."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.config import DataConfig
from ..errors import ConfigError
from ..experts import ExpertConfig
from .gates import GATES, GateKind
from .router import ROUTERS, VIEW_INPUTS, RouterKind

__all__ = ["MoEConfig", "PruneConfig", "published_config"]


@dataclass
class PruneConfig:
    """Gate-aware pruning of a trained mixture, then joint fine-tuning of what is left
    (:func:`moegs.moe.prune.prune_and_finetune`; the efficiency table's "pruned" rows, ``moegs prune``).

    Measured on a fresh demo's mixture after stage 3 (160x120, 3 experts of 20k Gaussians, 23.56 dB test
    PSNR): pruning alone to 97 % of the contributions keeps 23.8k Gaussians at 23.55 dB (``python
    benchmarks/moe.py --scene demo --mixture runs/demo/mixture/checkpoints/last.pt --prune-keep 0.97
    --prune-steps 0``); to 80 % it keeps 8.9k but falls to 20.55 dB (``moegs prune runs/demo/mixture --out DIR
    --steps 0``). Fine-tuning after pruning wins it back: 400 steps give 23.56 dB (the demo's report), 600 steps
    23.45 and 1000 steps 23.47 (``--steps N``; more steps fit the training views closer than the held-out
    camera), so the default is as many as the pipeline's stage 3.
    """

    # Share of the summed contributions to the blend of the sampled views that the kept Gaussians carry
    # (moegs.moe.prune.gate_prune: the fewest, largest first; 1 keeps all; 0.97 keeps the test PSNR
    # without fine-tuning).
    keep: float = 0.8
    # Training views (evenly spaced) whose contributions decide.
    views: int = 24
    # Joint fine-tuning steps after pruning (experts, gates and router, one training view per step); 0: prune only.
    steps: int = 400
    # The experts' learning rates during that fine-tuning are their own times this.
    lr_scale: float = 0.3

    def check(self) -> None:
        if not 0 < self.keep <= 1 or self.views < 1 or self.steps < 0 or self.lr_scale <= 0:
            raise ConfigError("prune: keep must be in (0, 1], steps >= 0, views >= 1 and lr_scale > 0")


@dataclass
class MoEConfig:
    """A mixture of experts trained on one scene (stages 2 and 3)."""

    # Router variant: uniform, image, pixel_rgb, gates, full or published (see moegs.moe.router).
    router: RouterKind = "full"
    # Gaussian gate: linear (static logit + linear-in-time term) or mlp (network of position, time, features);
    # the published router always uses its own three-channel gate (moegs.moe.gates.PublishedGate).
    gate: GateKind = "linear"
    # Published gate: initial value of its w and v channels (the authors' init_mixprob).
    gate_init: float = 0.9
    # Published router: value the splatted gate maps are composited over (the authors' white background).
    gate_background: float = 1.0
    # Ray encoding the router's decoder sees: origin_dir (origin + direction), dir, none; unset: the
    # variant's own (origin_dir for published, dir for the others).
    router_view: str | None = None
    # Training only: std of the Gaussian noise added to the decoder's ray directions (0: off).
    ray_jitter: float = 0.0
    # Training only: dropout probability of the decoder's view channels (0: off).
    view_dropout: float = 0.0
    # Weight of the total variation of the weight maps, mean |w(p) - w(p')| over neighbouring pixels (0: off).
    tv_weight: float = 0.0
    # Weight of the mean per-pixel entropy of the weights, -sum_k w_k log w_k (0: off; > 0 favours one
    # expert per pixel).
    entropy_weight: float = 0.0
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
    # The experts' configs by name, from their checkpoints; ``--set experts.<name>.<field>=v`` changes one
    # for stage 3 (e.g. its learning rates; its structure must fit the checkpoint's weights).
    experts: dict[str, ExpertConfig] = field(default_factory=dict)
    # Random seed (view order, gate network initialisation).
    seed: int = 0
    # Rasterizer backend: auto, cpu, torch or cuda.
    backend: str = "auto"
    # Render all experts in one rasterizer pass (false: one pass per expert, for comparisons).
    single_pass: bool = True
    # Memory budget (MB) of the cache of frozen experts' per-view Gaussians, projection and tile bins
    # reused across stage-2 steps (0: off).
    render_cache_mb: float = 512.0
    # Stage-2 view order: 0 draws shuffled epochs of the training views; W > 0 draws them in windows of
    # W views, each view of a window stage2_repeats times before the next window (the same draws per
    # view as stage2_repeats epochs), so that the cache serves all but a view's first draw in its
    # window (moegs.train.sampler.sample_view_windowed). Keep W views' cache entries within
    # render_cache_mb (about 36 MB per view for the demo's 3 experts at 160x120). A view's first draw builds
    # its entry (about a full step's work), the others reuse it. Measured with the demo's experts and the
    # gates router, 800 steps at 160x120 (`moegs train-moe SCENE --experts ... --router gates --steps 800
    # --set stage2_repeats=R`, train s and test PSNR of its summary): 8 x 2 in 34.3 s, 23.460 dB; 8 x 3 in
    # 27.4 s, 23.445 dB; 8 x 4 in 21.4 s, 23.419 dB; one pass per expert without the cache
    # (`--set single_pass=false --set render_cache_mb=0`) takes 67.3 s.
    stage2_window: int = 8
    stage2_repeats: int = 3
    # Device: auto (cuda if available), cpu or cuda.
    device: str = "auto"
    # Evaluate the mixture (and, with eval_experts, each expert alone) on the test views at the end.
    eval_at_end: bool = True
    eval_experts: bool = True
    # Gate-aware pruning and the fine-tuning after it (the efficiency table's pruned rows, ``moegs prune``).
    prune: PruneConfig = field(default_factory=PruneConfig)

    @property
    def gate_kind(self) -> str:
        """The gate the experts carry: ``"published"`` for the published router, else :attr:`gate`."""
        return "published" if self.router == "published" else self.gate

    def check(self) -> None:
        """Raise :class:`ConfigError` on values no run can use."""
        if self.router not in ROUTERS:
            raise ConfigError(f"unknown router {self.router!r}; choose from {', '.join(ROUTERS)}")
        if self.gate not in GATES:
            raise ConfigError(f"unknown gate {self.gate!r}; choose from {', '.join(GATES)}")
        if self.gate == "published" and self.router != "published":
            raise ConfigError("the published gate goes with router=published")
        if self.router_view is not None and self.router_view not in VIEW_INPUTS:
            raise ConfigError(f"unknown router_view {self.router_view!r}; choose from {', '.join(VIEW_INPUTS)}")
        if not 0 <= self.view_dropout < 1:
            raise ConfigError("view_dropout must be in [0, 1)")
        if min(self.ray_jitter, self.tv_weight, self.entropy_weight) < 0:
            raise ConfigError("ray_jitter, tv_weight and entropy_weight must be >= 0")
        if self.render_cache_mb < 0:
            raise ConfigError("render_cache_mb must be >= 0")
        if self.stage2_window < 0 or self.stage2_repeats < 1:
            raise ConfigError("stage2_window must be >= 0 and stage2_repeats >= 1")
        if self.steps < 0 or self.joint_steps < 0:
            raise ConfigError("steps and joint_steps must be >= 0")
        if self.temperature <= 0 or (self.temperature_final is not None and self.temperature_final <= 0):
            raise ConfigError("temperatures must be positive")
        self.prune.check()


def published_config(**overrides) -> MoEConfig:
    """The authors' router settings: ``router="published"``, training temperature 0.01, gate learning
    rate 1e-3 (their ``featuret_lr``), decoder 1e-4 (their ``rgb_lr``, constant), uniform start.

    Not reproduced: their RAdam optimiser (Adam here) and the decay of the ``w``/``v`` learning rate to
    1 % over 10k steps (constant here; the runs are far shorter). ``overrides`` set any other field.
    """
    cfg = dict(router="published", temperature=0.01, lr_gates=1e-3, lr_router=1e-4, lr_router_final=None,
               prior_weight=0.0)
    cfg.update(overrides)
    return MoEConfig(**cfg)
