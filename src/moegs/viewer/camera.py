"""Between the browser's camera (viser: position, ``wxyz`` camera-to-world rotation, vertical field of
view, aspect; OpenCV axes, +z forward, +y down) and moegs's :class:`~moegs.cameras.Camera`."""

from __future__ import annotations

import math

import numpy as np
import torch
import viser.transforms as vtf

from ..cameras import Camera

__all__ = ["camera_from_pose", "pose_of", "fit_size", "letterbox", "vertical_fov_to_show", "FREE_NEAR"]

# Near plane of the free camera when neither the data nor a scene gives one.
FREE_NEAR = 0.01


def fit_size(aspect: float, max_side: int) -> tuple[int, int]:
    """``(width, height)`` of an image of ``aspect`` (width / height) whose longest side is ``max_side``."""
    if aspect >= 1:
        return max_side, max(1, int(round(max_side / aspect)))
    return max(1, int(round(max_side * aspect))), max_side


def camera_from_pose(position: np.ndarray, wxyz: np.ndarray, fov: float, width: int, height: int,
                     time: float = 0.0, near: float = FREE_NEAR) -> Camera:
    """A pinhole camera at ``position`` ``[3]`` with camera-to-world rotation ``wxyz`` ``[4]`` and vertical
    field of view ``fov`` (radians), square pixels, principal point at the centre, clipped at ``near``."""
    R = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()  # camera -> world
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ np.asarray(position, dtype=np.float64)
    f = 0.5 * height / math.tan(0.5 * fov)
    return Camera(torch.tensor(w2c, dtype=torch.float32), f,  # cpu: camera poses are host-side values
                  f, width / 2.0, height / 2.0, width, height,
                  near=float(near), time=float(time), name="free")


def pose_of(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """``(position [3], wxyz [4])`` of ``camera`` in the browser's convention."""
    c2w = camera.camera_to_world.detach().cpu().double().numpy()
    return c2w[:3, 3].copy(), vtf.SO3.from_matrix(c2w[:3, :3]).wxyz


def vertical_fov_to_show(camera: Camera, aspect: float) -> float:
    """The browser's vertical field of view (radians) at ``aspect`` that frames ``camera`` letterboxed
    (:func:`letterbox`): its vertical one when the browser is wider, else the one matching its width."""
    if aspect >= camera.width / camera.height:
        return 2.0 * math.atan(0.5 * camera.height / camera.fy)
    half_w = 0.5 * camera.width / camera.fx
    return 2.0 * math.atan(half_w / aspect)


def letterbox(image: np.ndarray, aspect: float, fill: int = 24) -> np.ndarray:
    """``image`` ``[H, W, 3]`` uint8 centred on bars of ``fill`` to an ``aspect`` (width / height) canvas,
    so that the browser, which stretches a frame to its viewport, shows it undistorted."""
    h, w = image.shape[:2]
    if abs(w / h - aspect) * h < 1.0:
        return image
    H, W = (h, int(round(h * aspect))) if aspect > w / h else (int(round(w / aspect)), w)
    out = np.full((H, W, 3), fill, dtype=np.uint8)
    y, x = (H - h) // 2, (W - w) // 2
    out[y:y + h, x:x + w] = image
    return out
