"""Configuration of a training run: one dataclass used by the CLI and by Python."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from ..data.config import DataConfig
from ..errors import ConfigError
from .strategy import DefaultStrategy

__all__ = ["TrainConfig", "apply_overrides", "to_dict", "from_dict"]


@dataclass
class TrainConfig:
    """One expert trained on one scene."""

    # Expert name (see ``moegs.experts.EXPERTS``).
    expert: str = "static"
    # Expert hyper-parameters, overriding the expert config's defaults (``--set expert.<field>=v``).
    expert_options: dict = field(default_factory=dict)
    # How the scene is read.
    data: DataConfig = field(default_factory=DataConfig)
    # Densification / pruning.
    strategy: DefaultStrategy = field(default_factory=DefaultStrategy)
    # Optimisation steps (one view per step).
    steps: int = 3000
    # Weight of the D-SSIM term: loss = (1 - l) * L1 + l * (1 - SSIM).
    ssim_lambda: float = 0.2
    # Raise the active SH degree by one every this many steps.
    sh_increase_every: int = 1000
    # Write a checkpoint every this many steps (and at the end).
    checkpoint_every: int = 1000
    # Log training metrics every this many steps.
    log_every: int = 25
    # Random seed (view order, initialisation, densification sampling).
    seed: int = 0
    # Rasterizer backend: auto, cpu, torch or cuda.
    backend: str = "auto"
    # Device: auto (cuda if available), cpu or cuda.
    device: str = "auto"
    # Evaluate on the test views at the end and write renders.
    eval_at_end: bool = True


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if value.lower() in ("none", "null") and type(None) in typing.get_args(typ):
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _coerce(value, args[0])
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ValueError(f"choose from {', '.join(map(str, choices))}")
        return value
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if typ in (int, float, str):
        return typ(value)
    if origin is tuple or typ is tuple:
        items = [v for v in value.split(",") if v]
        elem = (typing.get_args(typ) or (str,))[0]
        return tuple(elem(v) if elem in (int, float, str) else v for v in items)
    return json.loads(value)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b.c=value`` overrides to a (nested) dataclass in place; dict fields take any key."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        obj, parts = cfg, key.split(".")
        if parts[0] == "expert" and len(parts) > 1:  # expert.<field> goes to expert_options
            cfg.expert_options[".".join(parts[1:])] = value
            continue
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise ConfigError(f"bad override {item!r}: no field {p!r}")
            obj = getattr(obj, p)
        name = parts[-1]
        fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if name not in fields:
            raise ConfigError(f"bad override {item!r}: no field {name!r} (fields: {', '.join(fields)})")
        hints = typing.get_type_hints(type(obj))
        try:
            setattr(obj, name, _coerce(value, hints[name]))
        except (ValueError, json.JSONDecodeError) as e:
            raise ConfigError(f"bad override {item!r}: {e}") from None
    return cfg


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild a (nested) dataclass from ``to_dict`` output."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, t = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = from_dict(t, v)
        elif isinstance(v, list) and (typing.get_origin(t) is tuple or tuple in typing.get_args(t)):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)
