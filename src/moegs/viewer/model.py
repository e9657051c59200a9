"""What the viewer shows: an expert or a mixture checkpoint, the scene it was trained on when it can be
found, and one function that renders a view of either."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..cameras import Camera
from ..data import DataConfig, Scene, View, load_scene
from ..errors import MoegsError
from ..eval import to_uint8
from ..experts import render_expert
from ..moe import FORMAT as MIXTURE_FORMAT
from ..moe import Mixture, load_mixture
from ..moe.checkpoint import mixture_scene_path
from ..moe.prune import gate_prune
from ..moe.viz import expert_palette, weight_map_rgb
from ..train.checkpoint import FORMAT as EXPERT_FORMAT
from ..train.checkpoint import expert_from_payload, load_checkpoint, resolve_checkpoint
from ..train.config import from_dict
from ..train.trainer import resolve_device
from .camera import FREE_NEAR

__all__ = ["ViewModel", "BLEND", "WEIGHTS"]

BLEND = "blend"
WEIGHTS = "expert weights"


@dataclass
class ViewModel:
    """A loaded checkpoint, ready to render.

    Attributes:
        path: the checkpoint file.
        expert: the expert, for an expert checkpoint (else ``None``).
        mixture: the mixture, for a mixture checkpoint (else ``None``).
        times: the scene's frame times (normalised, sorted), from the checkpoint.
        scene: the training scene, ``None`` when it could not be loaded (``notice`` says why).
        notice: a sentence for the user, empty when all went well.
        background: ``[3]`` colour behind the Gaussians.
        pruned: the gate-pruned copy of ``mixture`` once :meth:`pruned_mixture` made it.
        prune_counts: its ``{"before", "removed", "after"}`` Gaussian counts.
        near: near plane of the free camera: the data's ``near`` when set, else the smallest of the scene
            cameras' (the depth the model was trained to be seen from; Panoptic's cameras clip the dome's
            wall), else :data:`FREE_NEAR`.
    """

    path: Path
    expert: nn.Module | None
    mixture: Mixture | None
    times: list[float]
    scene: Scene | None
    notice: str
    background: Tensor
    backend: str = "auto"
    pruned: Mixture | None = None
    prune_counts: dict = field(default_factory=dict)
    near: float = FREE_NEAR

    @classmethod
    def load(cls, checkpoint: str | Path, data: str | Path | None = None, data_overrides: dict | None = None,
             *, backend: str = "auto", device: str = "auto") -> "ViewModel":
        """Load ``checkpoint`` (a file or a run directory; its ``format`` tells expert from mixture) and
        the scene it was trained on (``data`` overrides the recorded folder, ``data_overrides`` fields of
        the recorded :class:`~moegs.data.DataConfig`). A scene that cannot be found or read leaves ``scene`` ``None`` and says so in
        ``notice``; a bad checkpoint raises :class:`CheckpointError`."""
        path = resolve_checkpoint(checkpoint)
        dev = resolve_device(device)
        payload = load_checkpoint(path, (EXPERT_FORMAT, MIXTURE_FORMAT))
        if payload["format"] == EXPERT_FORMAT:
            expert, mixture = expert_from_payload(payload, path).to(dev).eval().requires_grad_(False), None
            times = payload["scene_meta"]["times"]
            recorded = payload["scene_meta"].get("path")
            data_dict = (payload.get("train_config") or {}).get("data")
        else:
            mixture, payload = load_mixture(path, dev)
            expert = None
            mixture.backend = backend
            mixture.eval().requires_grad_(False)
            times = payload["experts"][0]["scene_meta"]["times"]
            recorded = mixture_scene_path(payload)
            data_dict = payload["config"].get("data")
        cfg = from_dict(DataConfig, data_dict) if data_dict else DataConfig()
        for k, v in (data_overrides or {}).items():
            setattr(cfg, k, v)
        cfg.check()  # a bad override is the user's error, not a scene that cannot be read
        scene, notice = None, ""
        folder = data or recorded
        if folder is None:
            notice = "the checkpoint names no scene folder (give one with --data): free camera only"
        else:
            try:
                scene = load_scene(folder, cfg)
            except MoegsError as e:
                notice = f"scene not loaded ({e}): free camera only"
        bg = mixture.background if mixture is not None else (scene.background if scene is not None
                                                              else torch.zeros(3, device=dev))
        near = cfg.near if cfg.near is not None else (min(v.camera.near for v in scene.views) if scene is not None
                                                      else FREE_NEAR)
        return cls(path, expert, mixture, sorted(float(t) for t in times), scene, notice, bg.to(dev).float(),
                   backend, near=near)

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return self.background.device

    @property
    def expert_names(self) -> list[str]:
        return self.mixture.names if self.mixture is not None else [self.expert.name]

    @property
    def modes(self) -> list[str]:
        """What can be shown: the blend, the weight map and each expert for a mixture; the expert alone."""
        if self.mixture is None:
            return [self.expert.name]
        return [BLEND, WEIGHTS, *self.mixture.names]

    @property
    def palette(self) -> Tensor:
        """``[K, 3]`` the weight map's colour of each expert (:func:`moegs.moe.viz.expert_palette`)."""
        return expert_palette(len(self.expert_names))

    def cameras(self) -> dict[str, Camera]:
        """The scene's cameras by label (``"test 03"``, ``"train 00"``...), one per physical camera, test
        ones first; empty without a scene."""
        if self.scene is None:
            return {}
        out: dict[str, Camera] = {}
        for split, views in (("test", self.scene.test_views), ("train", self.scene.train_views)):
            seen: dict[int, View] = {}
            for v in views:
                seen.setdefault(v.camera_id, v)
            for cid, v in sorted(seen.items()):
                out[f"{split} {cid:02d}" + (f" ({v.camera.name})" if v.camera.name else "")] = v.camera
        return out

    def center_and_radius(self) -> tuple[np.ndarray, float]:
        """``([3], r)``: the median Gaussian centre and the scene extent, to frame a free camera."""
        experts = [self.expert] if self.mixture is None else list(self.mixture.experts)
        means = torch.cat([e.splats["means"].detach().float().cpu() for e in experts])
        center = means.median(dim=0).values.numpy().astype(np.float64)
        radius = float((means - means.median(dim=0).values).norm(dim=1).quantile(0.9)) if len(means) > 1 else 1.0
        return center, max(radius, 1e-3)

    # ------------------------------------------------------------------ rendering
    def pruned_mixture(self, keep: float, max_views: int) -> Mixture:
        """The gate-pruned copy of the mixture (:func:`moegs.moe.prune.gate_prune` over at most
        ``max_views`` training views spread over the scene), made once and kept."""
        if self.mixture is None or self.scene is None:
            raise ValueError("gate pruning needs a mixture and its training views")
        if self.pruned is None:
            views = self.scene.train_views
            step = max(1, len(views) // max_views)
            pruned = copy.deepcopy(self.mixture)
            pruned.clear_cache()
            self.prune_counts = gate_prune(pruned, views[::step][:max_views], keep)
            self.pruned = pruned.requires_grad_(False)
        return self.pruned

    @torch.no_grad()
    def render(self, camera: Camera, t: float, mode: str, pruned: bool = False) -> np.ndarray:
        """``[H, W, 3]`` uint8 image of ``mode`` (one of :attr:`modes`) for ``camera`` at time ``t``; with
        ``pruned`` the gate-pruned mixture (made by :meth:`pruned_mixture`) is rendered."""
        if self.mixture is None:
            return to_uint8(render_expert(self.expert, camera, t, background=self.background,
                                          backend=self.backend).color)
        mixture = self.pruned if pruned and self.pruned is not None else self.mixture
        out = mixture.render(camera, t)
        if mode == BLEND:
            img = out.color
        elif mode == WEIGHTS:
            img = weight_map_rgb(out.weights, self.palette)
        else:
            img = out.expert_colors[self.mixture.names.index(mode)]
        return to_uint8(img)


