"""One training run end to end: read the scene, build or resume the expert, train, evaluate, summarise.

Used by ``moegs train`` and by Python callers alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import io
from ..data import Scene, load_scene
from ..errors import ConfigError
from ..eval import evaluate_expert
from ..experts import SceneInit, build_expert
from . import distributed as dist
from .checkpoint import load_expert
from .config import TrainConfig, to_dict
from .loop import open_run_dir
from .trainer import Trainer

__all__ = ["scene_init", "scene_record", "train_expert"]


def scene_init(scene: Scene) -> SceneInit:
    """What an expert is built from: the scene's initial points, extent and times."""
    return SceneInit(points=scene.points, colors=scene.point_colors, extent=scene.extent,
                     times=torch.tensor(scene.times, dtype=torch.float32, device=scene.points.device))


def scene_record(scene: Scene) -> dict:
    """The facts about a scene a run's ``config.json`` records."""
    return {"name": scene.name, "format": scene.format, "train_views": len(scene.train_views),
            "test_views": len(scene.test_views), "world_size": dist.world_size()}


def train_expert(data: str | Path | Scene, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 progress: bool = True) -> dict:
    """Train ``config.expert`` on ``data`` into ``run_dir``; returns the summary (also in ``summary.json``).

    With ``resume``, continues from ``run_dir/checkpoints/last.pt`` when it exists.
    """
    run_dir = Path(run_dir)
    device = dist.init_from_env(config.device)
    scene = data if isinstance(data, Scene) else load_scene(data, config.data)
    torch.manual_seed(config.seed)
    last = run_dir / "checkpoints" / "last.pt"
    name = config.expert.name
    if resume and last.exists():
        expert, payload = load_expert(last)
        if payload["expert"] != name:
            raise ConfigError(f"{last}: holds expert {payload['expert']!r}, not {name!r}")
        trainer = Trainer(expert, scene, config, run_dir, device)
        trainer.load_trainer_state(payload["trainer"])
        resumed = trainer.step
    else:
        trainer = Trainer(build_expert(config.expert, scene_init(scene)), scene, config, run_dir, device)
        resumed = None
    open_run_dir(run_dir, {"train": to_dict(config), "scene": scene_record(scene)}, resumed)
    records = trainer.train(progress=progress)
    if not dist.is_main():
        return {"expert": name, "steps": trainer.step, "rank": dist.rank()}
    summary: dict = {"expert": name, "scene": scene.name, "steps": trainer.step,
                     "train_time_s": round(trainer.elapsed, 2),
                     "final_train_psnr": records[-1]["psnr"] if records else None}
    if config.eval_at_end and scene.test_views:
        res = evaluate_expert(trainer.expert, scene, backend=config.backend, out_dir=run_dir / "renders" / "test")
        summary.update({f"test_{k}": v for k, v in res.items() if k != "per_view"})
        io.write_json(run_dir / "eval.json", res)
    io.write_json(run_dir / "summary.json", summary)
    return summary
