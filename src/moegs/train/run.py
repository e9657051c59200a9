"""One training run end to end: read the scene, build or resume the expert, train, evaluate, summarise.

Used by ``moegs train`` and by Python callers alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data import Scene, load_scene
from ..errors import ConfigError
from ..eval import evaluate_expert
from ..experts import EXPERTS, SceneInit, build_expert
from . import distributed as dist
from .checkpoint import load_expert
from .config import TrainConfig, _coerce, to_dict
from .trainer import Trainer

__all__ = ["expert_config", "scene_init", "train_expert", "write_json"]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def expert_config(name: str, options: dict) -> Any:
    """The config of expert ``name`` with ``options`` (``field`` or ``nested.field`` -> value) applied."""
    if name not in EXPERTS:
        raise ConfigError(f"unknown expert {name!r}; choose from {', '.join(EXPERTS)}")
    cfg = EXPERTS[name][0]()
    import typing

    for key, value in options.items():
        obj, parts = cfg, key.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p, None)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"expert {name!r} has no option {key!r}")
        fields = {f.name for f in dataclasses.fields(obj)}
        if parts[-1] not in fields:
            raise ConfigError(f"expert {name!r} has no option {key!r} (options: {', '.join(sorted(fields))})")
        if isinstance(value, str):
            try:
                value = _coerce(value, typing.get_type_hints(type(obj))[parts[-1]])
            except ValueError as e:
                raise ConfigError(f"expert option {key}={value!r}: {e}") from None
        setattr(obj, parts[-1], value)
    return cfg


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after ``step`` (written after the checkpoint being resumed)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def scene_init(scene: Scene) -> SceneInit:
    return SceneInit(points=scene.points, colors=scene.point_colors, extent=scene.extent,
                     times=torch.tensor(scene.times, dtype=torch.float32))


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
    if resume and last.exists():
        expert, payload = load_expert(last)
        if payload["expert"] != config.expert:
            raise ConfigError(f"{last}: holds expert {payload['expert']!r}, not {config.expert!r}")
        trainer = Trainer(expert, scene, config, run_dir, device)
        trainer.load_trainer_state(payload["trainer"])
        if dist.is_main():
            _truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
    else:
        expert = build_expert(config.expert, scene_init(scene), expert_config(config.expert, config.expert_options))
        trainer = Trainer(expert, scene, config, run_dir, device)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            run_dir / "config.json",
            {"train": to_dict(config), "expert": dataclasses.asdict(expert.config),
             "scene": {"name": scene.name, "format": scene.format, "train_views": len(scene.train_views),
                       "test_views": len(scene.test_views), "world_size": dist.world_size()}},
        )
    records = trainer.train(progress=progress)
    if not dist.is_main():
        return {"expert": config.expert, "steps": trainer.step, "rank": dist.rank()}
    summary: dict = {"expert": config.expert, "scene": scene.name, "steps": trainer.step,
                     "train_time_s": round(trainer.elapsed, 2),
                     "final_train_psnr": records[-1]["psnr"] if records else None}
    if config.eval_at_end and scene.test_views:
        res = evaluate_expert(expert, scene, backend=config.backend, out_dir=run_dir / "renders" / "test")
        summary.update({f"test_{k}": v for k, v in res.items() if k != "per_view"})
        write_json(run_dir / "eval.json", res)
    write_json(run_dir / "summary.json", summary)
    return summary
