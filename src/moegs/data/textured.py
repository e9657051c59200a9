"""A static, richly textured multi-view capture with known geometry, for checking SfM.

:func:`write_blob_scene` writes an N3V folder (``camXX.mp4``, ``poses_bounds.npy``,
no point file) of small opaque Gaussian blobs of random colours on a back wall
(plane ``y = 2``), a floor (plane ``z = -1``) and in a cloud in front of them,
seen by a rig on an ellipse of viewing directions. Random colours give SIFT
distinctive, non-repeating texture (the heterogeneous demo scene of
:mod:`moegs.data.synthetic` has repeating bricks and tiles), the cloud gives
depth, and the known surfaces and cameras measure what SfM recovers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..cameras import Camera, look_at
from ..gaussians import GaussianSet
from .n3v import poses_bounds
from .video import write_video

__all__ = ["WALL_Y", "FLOOR_Z", "NUM_SURFACE_BLOBS", "blob_gaussians", "blob_rig", "write_blob_scene", "surface_distance"]

WALL_Y, FLOOR_Z = 2.0, -1.0
NUM_SURFACE_BLOBS = 12000  # the first blobs lie on the wall and the floor, the rest form the cloud


def blob_gaussians(seed: int = 0) -> GaussianSet:
    """Small opaque blobs of random colours: a back wall (y = 2), a floor (z = -1) and a cloud in front.

    Random colours give SIFT distinctive, non-repeating texture; the cloud gives depth.
    """
    g = np.random.default_rng(seed)
    n, m = 6000, 2000
    wall = np.stack([g.uniform(-3, 3, n), np.full(n, WALL_Y), g.uniform(-1, 2.5, n)], 1)
    floor = np.stack([g.uniform(-3, 3, n), g.uniform(-1.5, 2, n), np.full(n, FLOOR_Z)], 1)
    cloud = np.stack([g.uniform(-1, 1, m), g.uniform(-0.5, 1.0, m), g.uniform(-0.8, 1.0, m)], 1)
    means = np.concatenate([wall, floor, cloud])
    k = len(means)
    return GaussianSet(
        means=torch.tensor(means, dtype=torch.float32),  # cpu: host-side scene data, moved by the trainers
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(k, 1),  # cpu: host-side scene data, moved by the trainers
        log_scales=torch.tensor(np.log(g.uniform(0.01, 0.025, (k, 1))).repeat(3, 1), dtype=torch.float32),  # cpu: host-side scene data, moved by the trainers
        opacity_logits=torch.full((k,), 4.0),  # cpu: host-side scene data, moved by the trainers
        colors=torch.tensor(g.uniform(0, 1, (k, 3)), dtype=torch.float32),  # cpu: host-side scene data, moved by the trainers
    )


def blob_rig(num_cameras: int, width: int, height: int, spread: float = 0.3) -> list[Camera]:
    """Cameras on an ellipse of viewing directions (yaw and pitch vary), all looking at one point."""
    target = torch.tensor([0.0, 0.5, 0.2])  # cpu: host-side scene data, moved by the trainers
    cams = []
    for i in range(num_cameras):
        phi = 2 * math.pi * i / num_cameras
        yaw, pitch = spread * math.cos(phi), 0.25 + 0.6 * spread * math.sin(phi)
        eye = target + 3.5 * torch.tensor([math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch), math.sin(pitch)])  # cpu: host-side scene data, moved by the trainers
        cams.append(Camera(look_at(eye, target), 0.9 * width, 0.9 * width, width / 2, height / 2, width, height,
                           near=0.5, far=10.0, name=f"cam{i:02d}"))
    return cams


def write_blob_scene(root: Path, num_cameras: int = 8, width: int = 384, height: int = 288, frames: int = 2,
                     with_poses: bool = True) -> tuple[GaussianSet, list[Camera]]:
    """An N3V folder (``camXX.mp4``, ``poses_bounds.npy`` unless ``with_poses`` is false) of the blob scene,
    static over ``frames`` frames, without any point file. Returns the ground-truth Gaussians and cameras."""
    gs, cams = blob_gaussians(), blob_rig(num_cameras, width, height)
    root.mkdir(parents=True, exist_ok=True)
    for cam in cams:
        img = (gs.render(cam).color.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        write_video(root / f"{cam.name}.mp4", [img] * frames, fps=10, crf=12)
    if with_poses:
        np.save(root / "poses_bounds.npy", poses_bounds(cams))
    return gs, cams


def surface_distance(points: torch.Tensor, gaussians: GaussianSet) -> torch.Tensor:
    """``[M]`` distance of ``points [M, 3]`` to the nearest known surface: the wall plane, the floor
    plane or the centre of a cloud blob (blobs are 0.01-0.025 in radius)."""
    cloud = gaussians.means[NUM_SURFACE_BLOBS:]
    return torch.stack([(points[:, 1] - WALL_Y).abs(), (points[:, 2] - FLOOR_Z).abs(),
                        torch.cdist(points, cloud).min(1).values], 1).min(1).values
