"""Mixture checkpoints: self-contained (experts, gates, router), written atomically, loaded with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import io
from ..errors import CheckpointError
from ..train.checkpoint import expert_from_payload, load_checkpoint
from ..train.config import from_dict, to_dict
from .config import MoEConfig
from .build import router_from_config
from .gates import build_gate
from .mixture import Mixture
from .router import GATED

__all__ = ["FORMAT", "save_mixture", "load_mixture", "mixture_scene_path"]

FORMAT = "moegs-mixture/1"


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
    io.torch_save(payload, path)


def load_mixture(path: str | Path, device: torch.device | str = "cpu") -> tuple[Mixture, dict]:
    """``(mixture, payload)`` from a checkpoint written by :func:`save_mixture`; :class:`CheckpointError`
    when the file is missing, corrupt, of another kind or does not fit its own config."""
    payload = load_checkpoint(path, FORMAT)
    try:
        config = from_dict(MoEConfig, payload["config"])
        model: dict = payload["model"]
        experts = []
        for k, meta in enumerate(payload["experts"]):
            prefix = f"experts.{k}."
            sub = {n[len(prefix):]: v for n, v in model.items() if n.startswith(prefix)}
            experts.append(expert_from_payload(dict(meta, model=sub), path))
        K = len(experts)
        gates = None
        if config.router in GATED:
            gates = [build_gate(config.gate_kind, e.splats["means"].shape[0], extent=payload["experts"][k]["scene_meta"]
                                ["extent"], feature_dim=config.gate_feature_dim, hidden=config.gate_hidden,
                                time_freqs=config.time_freqs) for k, e in enumerate(experts)]
        router = router_from_config(config, K)
        mixture = Mixture(experts, router, gates, model["background"], config.backend, single_pass=config.single_pass,
                          cache_mb=config.render_cache_mb)
        mixture.load_state_dict(model)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"mixture does not fit its checkpoint ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return mixture.to(device), payload


def mixture_scene_path(payload: dict) -> str | None:
    """The scene folder a mixture checkpoint's experts were trained on (recorded in their own checkpoints,
    which the mixture names as ``source``); ``None`` when none of them is readable or records one."""
    for meta in payload["experts"]:
        source = meta.get("source")
        if source and Path(source).is_file():
            try:
                path = load_checkpoint(source)["scene_meta"].get("path")
            except CheckpointError:
                continue
            if path:
                return path
    return None
