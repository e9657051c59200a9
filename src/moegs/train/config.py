"""Configuration of a training run: one dataclass used by the CLI and by Python."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..data.config import DataConfig
from ..errors import ConfigError
from ..experts import EXPERTS, ExpertConfig, StaticConfig, expert_config
from .strategy import DefaultStrategy

__all__ = ["TrainConfig", "apply_overrides", "to_dict", "from_dict"]


@dataclass
class TrainConfig:
    """One expert trained on one scene."""

    # The expert and its hyper-parameters: one of the registered expert configs (``moegs.experts.EXPERTS``);
    # ``--set expert=<name>`` picks one, ``--set expert.<field>=v`` sets its fields.
    expert: ExpertConfig = field(default_factory=StaticConfig)
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

    def __post_init__(self) -> None:
        if isinstance(self.expert, str):  # an expert name stands for that expert's defaults
            try:
                self.expert = expert_config(self.expert)
            except KeyError as e:
                raise ConfigError(e.args[0]) from None


def to_dict(cfg: Any) -> Any:
    """A (nested) config as plain JSON-able values; a registered expert config also records its ``name``."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        d = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        name = getattr(type(cfg), "name", None)
        return {"name": name, **d} if isinstance(name, str) else d
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _registered(typ: Any) -> dict[str, type] | None:
    """``name -> config class`` of every registered expert when ``typ`` is an expert config type (the
    registry is read at call time, so an expert registered later is known too); ``None`` otherwise."""
    members = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)
    configs = {cfg for cfg, _ in EXPERTS.values()}
    if not any(m in configs for m in members):
        return None
    return {name: cfg for name, (cfg, _) in EXPERTS.items()}


def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if value.lower() in ("none", "null") and type(None) in typing.get_args(typ):
        return None
    if origin in (typing.Union, types.UnionType) and args:
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


def _walk(cfg: Any, parts: list[str], item: str) -> Any:
    """The object ``parts`` lead to from ``cfg`` (dataclass fields, or keys of a dict of configs)."""
    obj = cfg
    for p in parts:
        if isinstance(obj, dict):
            if p not in obj:
                raise ConfigError(f"bad override {item!r}: no {p!r} here (have: {', '.join(obj) or 'none'})")
            obj = obj[p]
        elif dataclasses.is_dataclass(obj) and p in {f.name for f in dataclasses.fields(obj)}:
            obj = getattr(obj, p)
        else:
            have = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else "none"
            raise ConfigError(f"bad override {item!r}: no field {p!r} (fields: {have})")
    return obj


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b.c=value`` overrides to a (nested) config in place, each checked against its field's type.

    A field holding a registered expert config takes an expert name (``expert=spacetime``: that expert's
    defaults); dicts of configs are walked by key (``experts.spacetime.gaussians.sh_degree=1``).
    Raises :class:`ConfigError` naming the override on an unknown field or a bad value.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        obj = _walk(cfg, parts[:-1], item)
        name = parts[-1]
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"bad override {item!r}: {'.'.join(parts[:-1])} has no settable fields")
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            raise ConfigError(f"bad override {item!r}: no field {name!r} (fields: {', '.join(fields)})")
        hint = typing.get_type_hints(type(obj))[name]
        named = _registered(hint)
        try:
            if named is not None:
                if value not in named:
                    raise ValueError(f"choose from {', '.join(named)}")
                new = named[value]()
            elif isinstance(getattr(obj, name), dict) or dataclasses.is_dataclass(getattr(obj, name)):
                raise ValueError(f"{key} is a group of settings: set its fields ({key}.<field>=...)")
            else:
                new = _coerce(value, hint)
        except (ValueError, json.JSONDecodeError) as e:
            raise ConfigError(f"bad override {item!r}: {e}") from None
        setattr(obj, name, new)
    return cfg


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild a (nested) config from :func:`to_dict` output."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        kwargs[f.name] = _from_value(hints[f.name], d[f.name])
    return cls(**kwargs)


def _from_value(t: Any, v: Any) -> Any:
    named = _registered(t)
    if named is not None and isinstance(v, dict):
        if v.get("name") not in named:
            raise ValueError(f"unknown expert {v.get('name')!r}; this moegs knows {', '.join(named)}")
        return from_dict(named[v["name"]], v)
    if dataclasses.is_dataclass(t) and isinstance(v, dict):
        return from_dict(t, v)
    if typing.get_origin(t) is dict and isinstance(v, dict):
        args = typing.get_args(t)
        return {k: _from_value(args[1], x) for k, x in v.items()} if len(args) == 2 else v
    if isinstance(v, list) and (typing.get_origin(t) is tuple or tuple in typing.get_args(t)):
        return tuple(v)
    return v
