"""Checkpoints of experts: written atomically, loaded with clear errors.

A checkpoint holds the expert's name and config, the scene facts it was
built from (extent, times), its state dict (per-Gaussian tensors at their
current, densified size) and optionally the trainer's state for resuming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io
from ..errors import CheckpointError
from ..experts import EXPERTS, SceneInit
from .config import from_dict, to_dict

__all__ = ["resolve_checkpoint", "save_expert", "load_checkpoint", "load_expert", "expert_from_payload",
           "FORMAT"]

FORMAT = "moegs-expert/1"


def save_expert(path: str | Path, expert: nn.Module, train_config: Any = None, *, scene_meta: dict,
                trainer_state: dict | None = None) -> None:
    """Write ``expert`` (and optionally the trainer's state) to ``path`` atomically.

    ``scene_meta`` holds ``extent`` (float) and ``times`` (list of floats), enough to rebuild the expert.
    """
    payload = {
        "format": FORMAT,
        "expert": expert.name,
        "expert_config": to_dict(expert.config),
        "train_config": to_dict(train_config) if train_config is not None else None,
        "sh_degree": int(expert.sh_degree),
        "scene_meta": {"extent": float(scene_meta["extent"]), "times": [float(t) for t in scene_meta["times"]],
                       "path": scene_meta.get("path")},
        "model": {k: v.detach().cpu() for k, v in expert.state_dict().items()},
        "trainer": trainer_state,
    }
    io.torch_save(payload, path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's ``checkpoints/last.pt``; :class:`CheckpointError`
    for a directory without one."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(path, "run directory without checkpoints (no checkpoints/last.pt)")
        return last
    return path


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] = FORMAT) -> dict:
    """Read a checkpoint file, checking that it is a ``kind`` checkpoint (one of ``kind`` when a tuple);
    :class:`CheckpointError` otherwise."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(path, f"not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(payload, dict) or payload.get("format") not in kinds:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(path, f"not a {' or '.join(kinds)} checkpoint (found {found!r})")
    return payload


def _resize_like(module: nn.Module, state: dict) -> None:
    """Give every parameter/buffer of ``module`` the shape it has in ``state`` (densified sizes)."""
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    for name, value in state.items():
        t = own.get(name)
        if t is not None and t.shape != value.shape:
            t.data = torch.empty(value.shape, dtype=value.dtype, device=t.device)


def expert_from_payload(payload: dict, path: str | Path = "<checkpoint>", config: Any = None) -> nn.Module:
    """Rebuild the expert stored in a loaded checkpoint payload (with ``config`` instead of the stored one,
    when given: e.g. other learning rates for fine-tuning; its structure must fit the stored weights)."""
    name = payload["expert"]
    if name not in EXPERTS:
        raise CheckpointError(path, f"unknown expert {name!r} (this moegs knows {', '.join(EXPERTS)})")
    config_cls, model_cls = EXPERTS[name]
    try:
        config = config if config is not None else from_dict(config_cls, payload["expert_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"unreadable config of expert {name!r} ({type(e).__name__}: {e})") from None
    model = payload["model"]
    means = model.get("splats.means")
    if means is None:
        raise CheckpointError(path, "checkpoint has no Gaussians (splats.means missing)")
    meta = payload["scene_meta"]
    # Everything an expert derives from its initial points is state (shapes set by _resize_like, values
    # by load_state_dict): a few points build it without initialising (nearest neighbours) all of them.
    seed = means[:8].float()
    init = SceneInit(points=seed, colors=torch.full_like(seed, 0.5), extent=meta["extent"],
                     times=torch.tensor(meta["times"], dtype=torch.float32, device=means.device))
    expert = model_cls(init, config)
    _resize_like(expert, model)
    try:
        expert.load_state_dict(model)
    except RuntimeError as e:
        raise CheckpointError(path, f"state does not fit expert {name!r}: {str(e).splitlines()[0][:160]}") from None
    expert.sh_degree = int(payload.get("sh_degree", expert.max_sh_degree))
    return expert


def load_expert(path: str | Path) -> tuple[nn.Module, dict]:
    """``(expert, payload)`` from a checkpoint written by :func:`save_expert`."""
    payload = load_checkpoint(path)
    return expert_from_payload(payload, path), payload
