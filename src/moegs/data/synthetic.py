"""A generated multi-view video scene with heterogeneous dynamics, written in the N3V layout.

This is moegs's embedded default scene (a fresh machine has no dataset) and the
testbed on which a mixture of dynamic experts must beat each single expert: its
regions move in different ways, so no one motion model fits all of them. How far
that holds for given experts is measured, not assumed: a pipeline's report on a
generated scene gives every expert's test PSNR region by region
(:meth:`GroundTruth.regions`, :func:`moegs.moe.region_psnr`).

The ground truth is a set of 3D Gaussians defined procedurally (seeded and
deterministic). World frame: ``z`` up, the cameras look along ``+y``. Components,
each in its own region of the image:

- ``"background"`` (static): a brick back wall (plane ``y = 2``) and a tiled floor
  (plane ``z = -1``) of small flat Gaussians, plus the flag's pole;
- ``"rigid"``: a cube with a chequered colour per face, translating along a closed
  curve while rotating about a tilted axis (left of the image);
- ``"deforming"``: a striped flag waving on its pole, a travelling wave whose
  amplitude grows away from the pole (right);
- ``"appearing"``: two spheres that fade in and out (opacity 0 -> 1 -> 0) in
  overlapping time windows (top);
- ``"color_changing"``: a static sphere whose hue cycles once over the clip (bottom).

:func:`generate_scene` renders it with moegs's rasterizer from a forward-facing
rig like N3V's (``cam00`` in the middle, the held-out test view; the others on
an ellipse of viewing directions around it, all looking at the same point) and
writes ``camXX.mp4`` (H.264), ``poses_bounds.npy`` (LLFF rows, exactly as N3V
stores them) and ``points3D.ply``, which the N3V loader reads as the initial
point cloud. Those points are, honestly, taken from the ground truth: the centres
of the Gaussians that are opaque at a few frames (as SfM run on several frames
would give; hidden surfaces included), subsampled, jittered by
``point_noise`` and coloured with their ground-truth colour plus noise.
``synthetic.json`` records the configuration and the scene's statistics; its
presence marks a complete folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..cameras import Camera, look_at
from ..errors import DataError
from ..gaussians import GaussianSet
from ..io import cache_dir
from ..render import Backend, RenderOutput, quat_to_rotmat
from .n3v import poses_bounds, write_ply_points
from .video import write_video

__all__ = [
    "COMPONENTS",
    "SCENE_VERSION",
    "SyntheticConfig",
    "GroundTruth",
    "ground_truth",
    "generate_scene",
    "read_config",
    "default_scene_path",
    "ensure_default_scene",
]

SCENE_VERSION = "heterogeneous-v2"  # bump when the scene's content changes (it names the cache folder)
COMPONENTS = ("background", "rigid", "deforming", "appearing", "color_changing")
MARKER = "synthetic.json"

# Rig: every camera looks at _TARGET from _DISTANCE away; cam00 at (yaw 0, pitch _PITCH0),
# the others at yaw _YAW * cos(phi), pitch _PITCH0 + _PITCH * sin(phi) for phi evenly around a circle.
_TARGET = (0.0, 0.9, 0.2)
_DISTANCE = 3.9
_PITCH0, _YAW, _PITCH = 0.05, 0.16, 0.08
_FOCAL_PER_WIDTH = 1.0  # focal length in pixels / image width (53 degree horizontal field of view)
_OPACITY = 0.97  # peak opacity of every ground-truth Gaussian
_LOGIT_EPS = 1e-6


@dataclass
class SyntheticConfig:
    """What :func:`generate_scene` makes. The defaults are the embedded default scene."""

    # Number of cameras (at least 2); cam00 is the middle one, the held-out test view.
    num_cameras: int = 10
    # Frames per video; frame k has normalised time k / (num_frames - 1).
    num_frames: int = 24
    # Image width in pixels (the focal length is this many pixels too). The textures are made for
    # about 160 pixels: much smaller, their colour detail is finer than H.264's half-resolution chroma.
    width: int = 160
    # Image height in pixels.
    height: int = 120
    # Frame rate stored in the videos (metadata only: times come from frame indices).
    fps: float = 30.0
    # Seed of every random choice (texture noise, position jitter, initial points).
    seed: int = 0
    # x264 constant rate factor of the videos (lower: bigger files, closer to the renders).
    crf: int = 12
    # Include the static wall, floor and pole.
    background: bool = True
    # Include the rigidly moving, rotating cube.
    rigid_object: bool = True
    # Include the waving flag.
    deforming_object: bool = True
    # Include the two spheres that fade in and out.
    appearing_objects: bool = True
    # Include the sphere whose colour cycles.
    color_changing_object: bool = True
    # Number of initial points written to points3D.ply (fewer if the scene has fewer candidates).
    num_points: int = 8000
    # Standard deviation of the Gaussian noise added to the initial points' positions (world units).
    point_noise: float = 0.01
    # Standard deviation of the noise added to the initial points' colours (in [0, 1] units).
    point_color_noise: float = 0.03
    # Number of evenly spaced frames whose opaque Gaussians give the initial points.
    point_frames: int = 4

    def __post_init__(self) -> None:
        if self.num_cameras < 2:
            raise ValueError(f"num_cameras must be at least 2 (cam00 is held out), got {self.num_cameras}")
        if self.num_frames < 1 or self.point_frames < 1 or self.num_points < 1:
            raise ValueError("num_frames, point_frames and num_points must be at least 1")
        if self.width < 8 or self.height < 8:
            raise ValueError(f"images must be at least 8x8 pixels, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not any(self.components):
            raise ValueError("at least one component must be included")

    @property
    def components(self) -> dict[str, bool]:
        """Component name (one of :data:`COMPONENTS`) -> whether it is included."""
        flags = (self.background, self.rigid_object, self.deforming_object, self.appearing_objects,
                 self.color_changing_object)
        return {name: on for name, on in zip(COMPONENTS, flags) if on}

    @property
    def times(self) -> list[float]:
        """Normalised time of every frame (the N3V loader's ``k / (K - 1)``)."""
        n = self.num_frames
        return [k / (n - 1) if n > 1 else 0.0 for k in range(n)]


# ---------------------------------------------------------------------------------- geometry helpers
def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of ``[..., 4]`` (w, x, y, z) quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack((
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ), dim=-1)


def _axis_angle_quat(axis: tuple[float, float, float], angle: float) -> Tensor:
    """``[4]`` unit quaternion of a rotation by ``angle`` radians about ``axis``."""
    a = torch.tensor(axis, dtype=torch.float32)  # cpu: host-side scene data, moved by the trainers
    a = a / a.norm()
    return torch.cat((torch.tensor([math.cos(angle / 2)]), math.sin(angle / 2) * a))  # cpu: host-side scene data, moved by the trainers


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``[n, 3]`` nearly uniform unit vectors."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z**2)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack((r * np.cos(phi), r * np.sin(phi), z), -1)


def _grid(a0: float, a1: float, b0: float, b1: float, step: float, rng: np.random.Generator,
          jitter: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[M]`` coordinate arrays of a jittered grid covering ``[a0, a1] x [b0, b1]``."""
    a, b = np.meshgrid(np.arange(a0, a1 + 1e-9, step), np.arange(b0, b1 + 1e-9, step), indexing="ij")
    a, b = a.ravel(), b.ravel()
    return a + rng.uniform(-jitter, jitter, a.shape) * step, b + rng.uniform(-jitter, jitter, b.shape) * step


# ----------------------------------------------------------------------------------------- parts
@dataclass
class _Part:
    """One component's Gaussians at rest and how they change with time.

    ``animate(rest, t)`` returns the :class:`GaussianSet` at normalised time ``t``.
    """

    name: str
    rest: GaussianSet
    animate: Callable[[GaussianSet, float], GaussianSet] = field(repr=False)


def _make_set(means: np.ndarray, scales: np.ndarray, colors: np.ndarray, opacity: float | np.ndarray = _OPACITY) -> GaussianSet:
    """Axis-aligned Gaussians: ``means [M, 3]``, standard deviations ``scales [M, 3]`` (or ``[3]``), RGB ``colors [M, 3]``."""
    M = len(means)
    quats = torch.zeros(M, 4)  # cpu: host-side scene data, moved by the trainers
    quats[:, 0] = 1.0
    scales = np.broadcast_to(np.asarray(scales, np.float64), (M, 3))
    opac = np.clip(np.broadcast_to(np.asarray(opacity, np.float64), (M,)), _LOGIT_EPS, 1 - _LOGIT_EPS)
    return GaussianSet(
        means=torch.from_numpy(np.asarray(means, np.float32)),
        quats=quats,
        log_scales=torch.from_numpy(np.log(scales).astype(np.float32)),
        opacity_logits=torch.from_numpy(np.log(opac / (1 - opac)).astype(np.float32)),
        colors=torch.from_numpy(np.clip(colors, 0.0, 1.0).astype(np.float32)),
    )


def _grain(rng: np.random.Generator, m: int, sigma: float) -> np.ndarray:
    """``[m, 1]`` grey texture noise (luminance only: H.264 halves the chroma resolution)."""
    return rng.normal(0.0, sigma, (m, 1))


def _static(rest: GaussianSet, t: float) -> GaussianSet:
    return rest


def _background(rng: np.random.Generator) -> _Part:
    step = 0.07
    sigma, thin = 0.8 * step, 0.004
    # Brick wall on the plane y = 2: bricks 0.42 x 0.21, every other row shifted, mortar lines.
    x, z = _grid(-4.2, 4.2, -1.0, 2.7, step, rng)
    row = np.floor((z + 1.0) / 0.21)
    bx = x / 0.42 + 0.5 * (row % 2)
    brick_id = (np.floor(bx) * 7919 + row * 104729).astype(np.int64)
    tone = ((brick_id * 2654435761) % 1000) / 1000.0 - 0.5  # per-brick value in [-0.5, 0.5), deterministic
    brick = np.stack((0.62 + 0.16 * tone, 0.30 + 0.08 * tone, 0.22 + 0.05 * tone), -1)
    fx, fz = (bx % 1.0) * 0.42, ((z + 1.0) % 0.21)
    mortar = (np.minimum(fx, 0.42 - fx) < 0.03) | (np.minimum(fz, 0.21 - fz) < 0.03)
    wall_rgb = np.where(mortar[:, None], np.array([0.78, 0.76, 0.70]), brick)
    wall_rgb = wall_rgb * (1.0 + 0.08 * np.sin(0.9 * x + 0.5)[:, None]) + _grain(rng, len(x), 0.03)
    wall = _make_set(np.stack((x, np.full_like(x, 2.0), z), -1), (sigma, thin, sigma), wall_rgb)
    # Tiled floor on the plane z = -1: 0.5 x 0.5 tiles of two tones.
    x, y = _grid(-4.2, 4.2, -0.9, 2.0, step, rng)
    checker = ((np.floor(x / 0.5) + np.floor(y / 0.5)) % 2)[:, None]
    floor_rgb = checker * np.array([0.56, 0.52, 0.46]) + (1 - checker) * np.array([0.30, 0.30, 0.36])
    floor_rgb = floor_rgb + _grain(rng, len(x), 0.03)
    floor = _make_set(np.stack((x, y, np.full_like(x, -1.0)), -1), (sigma, sigma, thin), floor_rgb)
    # The flag's pole: a thin vertical column of Gaussians.
    z = np.arange(-1.0, 0.64, 0.03)
    pole = _make_set(np.stack((np.full_like(z, 0.5), np.full_like(z, 0.5), z), -1), 0.018,
                     np.tile([0.72, 0.72, 0.75], (len(z), 1)))
    return _Part("background", _concat([wall, floor, pole]), _static)


def _concat(sets: list[GaussianSet]) -> GaussianSet:
    return GaussianSet(*(torch.cat([getattr(s, k) for s in sets]) for k in ("means", "quats", "log_scales", "opacity_logits", "colors")))


_CUBE_HALF = 0.2


def _cube_pose(t: float) -> tuple[Tensor, Tensor]:
    """``[4]`` rotation quaternion and ``[3]`` centre of the cube at time ``t``."""
    a = 2 * math.pi * t
    centre = torch.tensor([-1.0 + 0.22 * math.sin(a), 0.45 + 0.12 * math.cos(a), 0.15 + 0.18 * math.sin(2 * a)])  # cpu: host-side scene data, moved by the trainers
    return _axis_angle_quat((0.4, 0.3, 1.0), 0.3 + 1.5 * math.pi * t), centre


def _rigid(rest: GaussianSet, t: float) -> GaussianSet:
    q, c = _cube_pose(t)
    R = quat_to_rotmat(q[None])[0]
    return GaussianSet(rest.means @ R.T + c, _quat_mul(q.expand_as(rest.quats), rest.quats), rest.log_scales,
                       rest.opacity_logits, rest.colors)


def _cube(rng: np.random.Generator) -> _Part:
    h, n = _CUBE_HALF, 10
    s = (np.arange(n) + 0.5) / n * 2 * h - h  # face grid coordinates
    a, b = (m.ravel() for m in np.meshgrid(s, s, indexing="ij"))
    check = (((a > 0) ^ (b > 0)).astype(np.float64) * 0.35 + 0.65)[:, None]
    face_colors = [(0.90, 0.20, 0.15), (0.15, 0.65, 0.25), (0.20, 0.35, 0.90),
                   (0.95, 0.80, 0.15), (0.85, 0.30, 0.80), (0.15, 0.80, 0.85)]
    sets = []
    sigma, thin = 0.8 * 2 * h / n, 0.003
    for axis in range(3):
        for k, sign in enumerate((-1.0, 1.0)):
            pts = np.zeros((n * n, 3))
            others = [i for i in range(3) if i != axis]
            pts[:, axis], pts[:, others[0]], pts[:, others[1]] = sign * h, a, b
            scales = np.full(3, sigma)
            scales[axis] = thin
            rgb = np.array(face_colors[2 * axis + k]) * check + _grain(rng, n * n, 0.02)
            sets.append(_make_set(pts, scales, rgb))
    return _Part("rigid", _concat(sets), _rigid)


_FLAG_X0, _FLAG_LEN, _FLAG_Z0, _FLAG_HEIGHT, _FLAG_Y = 0.52, 0.8, 0.05, 0.55, 0.5


def _wave(rest: GaussianSet, t: float) -> GaussianSet:
    u = ((rest.means[:, 0] - _FLAG_X0) / _FLAG_LEN).clamp(0.0, 1.0)  # 0 at the pole, 1 at the free end
    phase = 2 * math.pi * (1.1 * u - 1.5 * t)
    d = torch.stack((-0.04 * u * (1 - torch.cos(phase)), 0.14 * u * torch.sin(phase), 0.05 * u * torch.sin(phase + 1.0)), -1)
    return GaussianSet(rest.means + d, rest.quats, rest.log_scales, rest.opacity_logits, rest.colors)


def _flag(rng: np.random.Generator) -> _Part:
    nu, nv = 24, 16
    u, v = (m.ravel() for m in np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv), indexing="ij"))
    x, z = _FLAG_X0 + _FLAG_LEN * u, _FLAG_Z0 + _FLAG_HEIGHT * v
    stripes = np.array([[0.15, 0.25, 0.75], [0.92, 0.92, 0.90], [0.85, 0.15, 0.20]])
    rgb = stripes[np.minimum((v * 3).astype(int), 2)]
    disc = (x - (_FLAG_X0 + 0.25)) ** 2 + (z - (_FLAG_Z0 + 0.5 * _FLAG_HEIGHT)) ** 2 < 0.12**2
    rgb = np.where(disc[:, None], np.array([0.98, 0.80, 0.10]), rgb) + _grain(rng, len(rgb), 0.02)
    return _Part("deforming", _make_set(np.stack((x, np.full_like(x, _FLAG_Y), z), -1), 0.028, rgb), _wave)


def _envelope(t: float, start: Tensor, end: Tensor) -> Tensor:
    """``[M]`` opacity factor: ``sin^2`` bump from 0 at ``start`` through 1 to 0 at ``end`` (0 outside)."""
    s = ((t - start) / (end - start)).clamp(0.0, 1.0)
    return torch.sin(math.pi * s) ** 2


def _fade(windows: Tensor, rest: GaussianSet, t: float) -> GaussianSet:
    """Opacity ``_OPACITY * envelope(t)``; ``windows`` ``[M, 2]`` holds each Gaussian's (start, end)."""
    opac = (_OPACITY * _envelope(t, windows[:, 0], windows[:, 1])).clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
    return GaussianSet(rest.means, rest.quats, rest.log_scales, torch.log(opac / (1 - opac)), rest.colors)


def _sphere(centre: tuple[float, float, float], radius: float, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``[n, 3]`` points on a sphere, their ``[n, 3]`` unit directions and a Gaussian size covering it."""
    d = _fibonacci_sphere(n)
    return np.asarray(centre) + radius * d, d, 0.8 * math.sqrt(4 * math.pi * radius**2 / n)


def _appearing(rng: np.random.Generator) -> _Part:
    pa, da, sa = _sphere((-0.35, 0.6, 0.95), 0.19, 320)
    rgb_a = np.where((np.floor((da[:, 2] + 1) * 4) % 2)[:, None] > 0, [0.98, 0.55, 0.10], [0.60, 0.20, 0.05])
    pb, db, sb = _sphere((0.32, 0.6, 0.98), 0.18, 300)
    spots = rng.uniform(0, 1, len(pb)) < 0.3
    rgb_b = np.where(spots[:, None], [0.95, 0.95, 0.95], [0.10, 0.60, 0.60])
    a = _make_set(pa, sa, rgb_a + _grain(rng, len(rgb_a), 0.02))
    b = _make_set(pb, sb, rgb_b + _grain(rng, len(rgb_b), 0.02))
    windows = torch.tensor([[0.05, 0.60]] * len(pa) + [[0.40, 0.95]] * len(pb))  # cpu: host-side scene data, moved by the trainers
    return _Part("appearing", _concat([a, b]), partial(_fade, windows))


def _recolor(rest: GaussianSet, t: float) -> GaussianSet:
    """Colour = rest brightness pattern x a hue that goes once around the colour wheel."""
    hue = torch.tensor([0.5 + 0.45 * math.cos(2 * math.pi * (t + c / 3)) for c in range(3)])  # cpu: host-side scene data, moved by the trainers
    return GaussianSet(rest.means, rest.quats, rest.log_scales, rest.opacity_logits, rest.colors * hue)


def _color_changing(rng: np.random.Generator) -> _Part:
    p, d, s = _sphere((0.0, 0.5, -0.5), 0.26, 520)
    lon = np.arctan2(d[:, 1], d[:, 0])
    brightness = np.where(np.cos(6 * lon) > 0, 1.0, 0.7) + rng.normal(0, 0.02, len(p))
    return _Part("color_changing", _make_set(p, s, np.repeat(brightness[:, None], 3, 1)), _recolor)


_BUILDERS: dict[str, Callable[[np.random.Generator], _Part]] = {
    "background": _background,
    "rigid": _cube,
    "deforming": _flag,
    "appearing": _appearing,
    "color_changing": _color_changing,
}


# ---------------------------------------------------------------------------------- ground truth
def _rig(config: SyntheticConfig) -> list[tuple[float, float]]:
    """``(yaw, pitch)`` of every camera's viewing direction, cam00 first."""
    n = config.num_cameras - 1
    return [(0.0, _PITCH0)] + [(_YAW * math.cos(2 * math.pi * k / n), _PITCH0 + _PITCH * math.sin(2 * math.pi * k / n))
                               for k in range(n)]


@dataclass
class GroundTruth:
    """The procedural scene: its Gaussians at any time and the rig that films them.

    Attributes:
        config: what it was made from.
        cameras: one :class:`Camera` per video (``cameras[i]`` films ``camXX.mp4`` with ``XX = i``),
            time 0, exactly as the N3V loader reads them back (``fx = fy``, principal point at the centre).
        parts: the included components, in :data:`COMPONENTS` order.
    """

    config: SyntheticConfig
    cameras: list[Camera]
    parts: list[_Part]

    @property
    def labels(self) -> Tensor:
        """``[N]`` int64 index into :data:`COMPONENTS` of every Gaussian (the order of :meth:`at`)."""
        return torch.cat([torch.full((len(p.rest),), COMPONENTS.index(p.name)) for p in self.parts])  # cpu: host-side scene data, moved by the trainers

    def at(self, t: float, components: tuple[str, ...] | None = None) -> GaussianSet:
        """The Gaussians (RGB colours) at normalised time ``t``, all ``N`` or those of ``components``."""
        chosen = [p for p in self.parts if components is None or p.name in components]
        if not chosen:
            raise ValueError(f"none of {components} is in this scene (it has {[p.name for p in self.parts]})")
        return _concat([p.animate(p.rest, float(t)) for p in chosen])

    def render(self, camera: int, frame: int, components: tuple[str, ...] | None = None,
               backend: Backend = "auto") -> RenderOutput:
        """Render frame ``frame`` (time ``config.times[frame]``) from camera ``camera`` over black."""
        t = self.config.times[frame]
        return self.at(t, components).render(self.cameras[camera].with_time(t), backend=backend)

    @torch.no_grad()
    def regions(self, camera: Camera, backend: Backend = "auto") -> Tensor:
        """``[H, W]`` int64 index into :data:`COMPONENTS` of the component seen at each pixel of ``camera``
        (at ``camera.time``, any resolution), -1 where nothing covers the pixel.

        The component is the one with the largest share of the pixel's compositing weights, from one
        render of the whole scene with each Gaussian's component as a one-hot extra channel, so occlusion
        is the render's own. A pixel counts as covered where the weights sum to at least one half.
        """
        onehot = torch.nn.functional.one_hot(self.labels, len(COMPONENTS)).float()
        w = self.at(camera.time).render(camera, extras=onehot, backend=backend).extras  # [H, W, C]
        label = w.argmax(-1)
        return torch.where(w.sum(-1) >= 0.5, label, torch.full_like(label, -1))


@torch.no_grad()
def ground_truth(config: SyntheticConfig | None = None) -> GroundTruth:
    """Build the scene's Gaussians and cameras (deterministic in ``config``; no rendering)."""
    config = config or SyntheticConfig()
    parts = [_BUILDERS[name](np.random.default_rng([config.seed, COMPONENTS.index(name)]))
             for name in config.components]
    all_means = torch.cat([p.rest.means for p in parts])
    target = torch.tensor(_TARGET)  # cpu: host-side scene data, moved by the trainers
    f = _FOCAL_PER_WIDTH * config.width
    cameras = []
    for i, (yaw, pitch) in enumerate(_rig(config)):
        eye = target + _DISTANCE * torch.tensor([math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch), math.sin(pitch)])  # cpu: host-side scene data, moved by the trainers
        w2c = look_at(eye, target)
        # LLFF-style bounds: the range of depths of the scene's content, with a margin.
        z = (all_means @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        near, far = max(0.05, 0.8 * float(z.min())), 1.2 * float(z.max())
        cameras.append(Camera(w2c, f, f, config.width / 2, config.height / 2, config.width, config.height,
                              near=near, far=far, name=f"cam{i:02d}"))
    return GroundTruth(config, cameras, parts)


def _initial_points(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """``[M, 3]`` jittered centres and ``[M, 3]`` colours of Gaussians opaque at ``point_frames`` frames."""
    cfg = gt.config
    rng = np.random.default_rng([cfg.seed, len(COMPONENTS)])
    times = np.linspace(0.0, 1.0, cfg.point_frames) if cfg.point_frames > 1 else np.zeros(1)
    xyz, rgb = [], []
    for part in gt.parts:
        for t in times[:1] if part.animate is _static else times:
            g = part.animate(part.rest, float(t))
            keep = torch.sigmoid(g.opacity_logits) > 0.5
            xyz.append(g.means[keep].double().numpy())
            rgb.append(g.colors[keep].double().numpy())
    xyz, rgb = np.concatenate(xyz), np.concatenate(rgb)
    idx = rng.permutation(len(xyz))[: cfg.num_points]
    xyz = xyz[idx] + rng.normal(0.0, cfg.point_noise, (len(idx), 3))
    rgb = np.clip(rgb[idx] + rng.normal(0.0, cfg.point_color_noise, (len(idx), 3)), 0.0, 1.0)
    return xyz, rgb


def _to_uint8(image: Tensor) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] -> ``[H, W, 3]`` uint8."""
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


@torch.no_grad()
def _write(folder: Path, config: SyntheticConfig) -> dict:
    """Render and write every file of the scene into ``folder``; returns the facts for the marker."""
    start = time.perf_counter()
    gt = ground_truth(config)
    frames: list[list[np.ndarray]] = [[] for _ in gt.cameras]
    backend = ""
    for t in config.times:
        g = gt.at(t)
        for i, cam in enumerate(gt.cameras):
            out = g.render(cam.with_time(t))
            frames[i].append(_to_uint8(out.color))
            backend = out.meta["backend"]
    for cam, video in zip(gt.cameras, frames):
        write_video(folder / f"{cam.name}.mp4", video, fps=config.fps, crf=config.crf)
    np.save(folder / "poses_bounds.npy", poses_bounds(gt.cameras))
    xyz, rgb = _initial_points(gt)
    write_ply_points(folder / "points3D.ply", xyz, rgb)
    return {
        "version": SCENE_VERSION,
        "config": asdict(config),
        "gaussians": {p.name: len(p.rest) for p in gt.parts},
        "initial_points": len(xyz),
        "backend": backend,
        "seconds": round(time.perf_counter() - start, 2),
    }


def read_config(root: str | Path) -> SyntheticConfig | None:
    """The :class:`SyntheticConfig` the generated scene in ``root`` was made from (its marker), or ``None``
    when ``root`` is not a complete generated scene of this version."""
    marker = _read_marker(Path(root))
    if marker is None or marker.get("version") != SCENE_VERSION:
        return None
    return SyntheticConfig(**marker["config"])


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, config: SyntheticConfig) -> bool:
    """Whether ``root`` holds this exact scene; raises if it holds something else."""
    if not root.exists():
        return False
    marker = _read_marker(root)
    if marker is None:
        if root.is_dir() and not any(root.iterdir()):
            return False
        raise DataError(root, "exists and is not a generated synthetic scene; pass overwrite=True to replace it")
    if marker.get("version") != SCENE_VERSION or marker.get("config") != asdict(config):
        raise DataError(root, f"holds a synthetic scene made differently (version {marker.get('version')!r}, "
                              f"config {marker.get('config')}); pass overwrite=True to replace it")
    return True


def generate_scene(root: str | Path, config: SyntheticConfig | None = None, *, overwrite: bool = False) -> Path:
    """Render the scene of ``config`` into the N3V folder ``root`` (see the module docstring).

    Atomic: everything is written into a hidden temporary folder beside ``root``,
    which is renamed to ``root`` only once complete (``synthetic.json`` written
    last), so an interrupted run leaves no partial scene. A second call on a
    complete folder made with the same configuration does nothing.

    Args:
        root: the scene folder to create.
        config: what to generate (default :class:`SyntheticConfig`).
        overwrite: replace ``root`` even if it exists (complete or not, same config or not).

    Returns:
        ``root``.

    Raises:
        DataError: ``root`` exists, is not this scene and ``overwrite`` is false.
    """
    root, config = Path(root), config or SyntheticConfig()
    if not overwrite and _is_complete(root, config):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        marker = _write(tmp, config)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if overwrite and root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            try:
                os.replace(tmp, root)
            except OSError:
                os.replace(old / root.name, root)  # put the previous scene back
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, root)  # fails if another process has completed root meanwhile
            except OSError:
                if not _is_complete(root, config):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_scene_path() -> Path:
    """Per-user cache folder of the default scene: ``$MOEGS_CACHE_DIR/scenes/<version>``
    (default cache ``~/.cache/moegs``)."""
    return cache_dir("scenes", SCENE_VERSION)


def ensure_default_scene() -> Path:
    """The default scene's folder, generated (about ten seconds) if it is not there yet."""
    return generate_scene(default_scene_path(), SyntheticConfig())
