"""The camera type shared by every loader, the rasterizer and the trainers.

Convention (one, everywhere in moegs): OpenCV pinhole. Camera axes are x right,
y down, z forward (looking along +z); ``world_to_camera`` maps homogeneous
world points to camera coordinates, ``x_cam = R @ x_world + t``. Pixel centres
sit at integer + 0.5 coordinates: the centre of the top-left pixel is
``(0.5, 0.5)`` and a point at camera coordinates ``(x, y, z)`` projects to
``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = ["Camera", "look_at"]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at one moment of a (possibly dynamic) scene.

    Attributes:
        world_to_camera: ``[4, 4]`` float tensor, OpenCV convention.
        fx, fy, cx, cy: intrinsics in pixels of *this* resolution.
        width, height: image size in pixels.
        near, far: clipping depths along +z.
        time: normalised time in ``[0, 1]`` of the frame this camera sees.
        name: a label (camera id, image name) for logs and file names.
    """

    world_to_camera: Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.01
    far: float = 1.0e4
    time: float = 0.0
    name: str = ""
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        w2c = self.world_to_camera
        if not isinstance(w2c, Tensor) or tuple(w2c.shape) != (4, 4):
            raise ValueError(f"camera {self.name!r}: world_to_camera must be a [4, 4] tensor")
        if not torch.isfinite(w2c).all():
            raise ValueError(f"camera {self.name!r}: world_to_camera has NaN or inf entries")
        for k in ("fx", "fy", "cx", "cy"):
            v = getattr(self, k)
            if not math.isfinite(v):
                raise ValueError(f"camera {self.name!r}: {k} is not finite ({v})")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera {self.name!r}: focal lengths must be positive")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera {self.name!r}: image size must be at least 1x1")

    # ------------------------------------------------------------------ views
    @property
    def K(self) -> Tensor:
        """``[3, 3]`` intrinsic matrix."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=self.world_to_camera.dtype,
            device=self.world_to_camera.device,
        )

    @property
    def R(self) -> Tensor:
        """``[3, 3]`` world-to-camera rotation."""
        return self.world_to_camera[:3, :3]

    @property
    def t(self) -> Tensor:
        """``[3]`` world-to-camera translation."""
        return self.world_to_camera[:3, 3]

    @property
    def camera_to_world(self) -> Tensor:
        """``[4, 4]`` inverse of ``world_to_camera``."""
        return torch.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> Tensor:
        """``[3]`` camera centre in world coordinates."""
        return -self.R.T @ self.t

    def to(self, device: torch.device | str) -> "Camera":
        return replace(self, world_to_camera=self.world_to_camera.to(device))

    def scaled(self, factor: float) -> "Camera":
        """The same camera with an image ``factor`` times the size (0.5 halves it).

        Width and height are rounded; intrinsics are scaled by the actual
        ratio of new to old size so that pixel-centre geometry stays exact.
        """
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        sx, sy = w / self.width, h / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy, width=w, height=h)

    def with_time(self, time: float) -> "Camera":
        return replace(self, time=float(time))

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points ``[..., 3]`` to pixels ``[..., 2]``; also returns depth ``[...]``."""
        p = points @ self.R.T.to(points) + self.t.to(points)
        z = p[..., 2]
        uv = torch.stack((self.fx * p[..., 0] / z + self.cx, self.fy * p[..., 1] / z + self.cy), dim=-1)
        return uv, z

    def ray_directions(self) -> Tensor:
        """``[H, W, 3]`` unit world-space ray directions through pixel centres."""
        dev, dt = self.world_to_camera.device, self.world_to_camera.dtype
        v, u = torch.meshgrid(
            torch.arange(self.height, device=dev, dtype=dt) + 0.5,
            torch.arange(self.width, device=dev, dtype=dt) + 0.5,
            indexing="ij",
        )
        d = torch.stack(((u - self.cx) / self.fx, (v - self.cy) / self.fy, torch.ones_like(u)), dim=-1)
        d = d @ self.R  # camera -> world rotation is R^T: row-vector form d @ R
        return d / d.norm(dim=-1, keepdim=True)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """``[4, 4]`` OpenCV world-to-camera matrix for a camera at ``eye`` looking at ``target``.

    ``up`` is the world's up direction (default ``+z``); the image's y axis
    points away from it.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)  # cpu: camera poses are host-side values
    target = torch.as_tensor(target, dtype=torch.float32, device=eye.device)
    up = eye.new_tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up, dtype=torch.float32, device=eye.device)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-8:  # looking along up: pick any perpendicular
        x = torch.linalg.cross(z, z.new_tensor([1.0, 0.0, 0.0]))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack((x, y, z), dim=0)
    w2c = torch.eye(4, device=eye.device)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c
