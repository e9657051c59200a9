"""One config surface: typed ``--set`` overrides on every command, and an expert added by registering it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

from moegs.cli.main import main
from moegs.errors import ConfigError
from moegs.experts import EXPERTS, CanonicalConfig, ParamGroup, SceneInit, splat_param_groups
from moegs.gaussians import GaussianSet, init_splats
from moegs.moe.config import MoEConfig
from moegs.pipeline import PipelineConfig
from moegs.train import TrainConfig, apply_overrides
from moegs.train.config import from_dict, to_dict


def test_expert_overrides_are_typed_and_round_trip():
    cfg = apply_overrides(TrainConfig(), ["expert=spacetime", "expert.gaussians.sh_degree=1",
                                          "expert.init_time_copies=2", "strategy.grow_grad2d=3e-4"])
    assert cfg.expert.name == "spacetime" and cfg.expert.gaussians.sh_degree == 1 and cfg.expert.init_time_copies == 2
    back = from_dict(TrainConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg and type(back.expert) is type(cfg.expert)


@pytest.mark.parametrize("item, words", [
    ("expert.nope=1", "no field 'nope'"),
    ("expert.gaussians.sh_degree=two", "invalid literal"),
    ("expert=unknown", "choose from"),
    ("expert.gaussians=1", "group of settings"),
    ("nope.x=1", "no field 'nope'"),
])
def test_bad_overrides_name_the_problem(item, words):
    with pytest.raises(ConfigError, match=words):
        apply_overrides(TrainConfig(), [item])


def test_pipeline_overrides_each_expert_by_name():
    cfg = PipelineConfig().with_experts(["static", "deformable"])
    apply_overrides(cfg, ["experts.deformable.warmup_steps=7", "experts.static.gaussians.init_opacity=0.2",
                          "moe.router=full"])
    assert cfg.experts["deformable"].warmup_steps == 7 and cfg.experts["static"].gaussians.init_opacity == 0.2
    assert cfg.moe.router == "full"  # the pipeline default is gates
    with pytest.raises(ConfigError, match="have: static, deformable"):
        apply_overrides(cfg, ["experts.spacetime.gaussians.sh_degree=1"])


def test_mixture_refuses_data_parallel_launch(monkeypatch, tmp_path):
    from moegs.moe import train_mixture

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        train_mixture([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path, MoEConfig(), tmp_path / "run")


def test_cli_rejects_bad_overrides_in_one_line(toy_scene_dir, tmp_path, capsys):
    for argv in (["train", str(toy_scene_dir), "--set", "expert.sh_degree=1"],
                 ["pipeline", str(toy_scene_dir), "--set", "experts.hexplane.warmup_steps=3"]):
        assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moegs: error: bad override"), err
        assert not (tmp_path / "run").exists()


# --------------------------------------------------------------- a new expert
@dataclass
class JitterConfig:
    """A toy expert: static Gaussians that drift linearly in x with time."""

    name: ClassVar[str] = "jitter"
    gaussians: CanonicalConfig = field(default_factory=lambda: CanonicalConfig(sh_degree=1, max_init_points=500))
    # Drift per unit of time (scene units).
    drift: float = 0.01


class JitterGaussians(torch.nn.Module):
    name = "jitter"

    def __init__(self, init: SceneInit, config: JitterConfig | None = None) -> None:
        super().__init__()
        self.config = config or JitterConfig()
        g = self.config.gaussians
        self.splats = init_splats(init.points, init.colors, sh_degree=g.sh_degree, init_opacity=g.init_opacity,
                                  max_points=g.max_init_points)
        self.extent = float(init.extent)
        self.max_sh_degree, self.sh_degree = g.sh_degree, 0

    def gaussians_at(self, t: float) -> GaussianSet:
        s = self.splats
        shift = s["means"].new_tensor([self.config.drift * t, 0.0, 0.0])
        return GaussianSet(s["means"] + shift, s["quats"], s["scales"], s["opacities"],
                           torch.cat((s["sh0"], s["shN"]), dim=1), self.sh_degree)

    def param_groups(self) -> dict[str, ParamGroup]:
        return splat_param_groups(self.splats, self.config.gaussians.lr, self.extent)

    def regularization(self, step: int) -> dict:
        return {}

    def on_step(self, step: int) -> None:
        return None


def test_a_new_expert_is_one_module_plus_its_registry_line(monkeypatch, toy_scene_dir, tmp_path):
    """Registering the class pair is all it takes: CLI choice, typed overrides, training, checkpoints, resume."""
    monkeypatch.setitem(EXPERTS, "jitter", (JitterConfig, JitterGaussians))
    out = tmp_path / "run"
    argv = ["train", str(toy_scene_dir), "--expert", "jitter", "--steps", "6", "--set", "expert.drift=0.05",
            "--set", "checkpoint_every=3", "--out", str(out), "--quiet", "--backend", "cpu"]
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())["train"]["expert"]
    assert saved["name"] == "jitter" and saved["drift"] == 0.05
    assert main([*argv[:5], "9", *argv[6:], "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 9
