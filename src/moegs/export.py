"""Export Gaussians to the files other viewers read: the 3DGS PLY layout and the ``.splat`` format.

**PLY** (the INRIA reference implementation's layout, read by its SIBR viewer and by the common web
viewers): one ``vertex`` element with float32 properties, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 ... f_rest_{3(K-1)-1}  opacity  scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``f_dc_*`` are the degree-0 SH coefficients (colour = 0.5 + C0 * f_dc), ``f_rest_*`` the higher bands stored
channel-major (all coefficients of red, then green, then blue, as the reference's
``features_rest.transpose(1, 2).flatten(1)``), ``opacity`` the logit, ``scale_*`` the log standard deviations,
``rot_*`` the quaternion (w, x, y, z, not necessarily unit), normals zero.

**.splat** (antimatter15's web viewer format): 32 bytes per Gaussian, no header: position (3 x float32), scale
(3 x float32, ``exp`` of the log scale), colour RGBA (4 x uint8: the DC colour and ``sigmoid(opacity)``),
rotation (4 x uint8, ``q / |q| * 128 + 128``, w x y z), sorted by decreasing ``exp(sum log scales) * opacity``
as the format's own converter does. It keeps DC colour only (no view dependence) and quantises colour,
opacity and rotation to 8 bits.

A dynamic expert exports the Gaussians it presents at one time ``t`` (``expert.gaussians_at(t)``); a time
range gives a numbered sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import io
from .errors import DataError
from .gaussians import GaussianSet
from .render.sh import C0, num_sh_bases, rgb_to_sh0

__all__ = ["ply_fields", "sh_coefficients", "write_ply", "read_ply", "write_splat", "read_splat", "export_gaussians",
           "FORMATS"]

FORMATS = ("ply", "splat")


def ply_fields(sh_degree: int) -> list[str]:
    """The vertex properties of a 3DGS PLY holding SH up to ``sh_degree``, in file order."""
    rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def sh_coefficients(gs: GaussianSet) -> Tensor:
    """``[N, K, 3]`` SH coefficients of the bands ``gs`` renders with (RGB colours become degree 0)."""
    colors = gs.colors_tensor()
    if not gs.is_sh:
        return rgb_to_sh0(colors)[:, None]
    return colors[:, : num_sh_bases(gs.sh_degree)]


def write_ply(gs: GaussianSet, path: str | Path) -> Path:
    """Write ``gs`` as a binary little-endian 3DGS PLY, atomically; returns ``path``."""
    from plyfile import PlyData, PlyElement

    sh = sh_coefficients(gs).detach().cpu().float()  # [N, K, 3]
    n, k = sh.shape[0], sh.shape[1]
    cols = [gs.means.detach().cpu().float(), sh.new_zeros(n, 3), sh[:, 0],
            sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1)), gs.opacity_logits.detach().cpu().float()[:, None],
            gs.log_scales.detach().cpu().float(), gs.quats.detach().cpu().float()]
    data = torch.cat(cols, dim=1).numpy()
    names = ply_fields(int(round(k**0.5)) - 1)
    vertex = np.empty(n, dtype=[(f, "<f4") for f in names])
    for i, f in enumerate(names):
        vertex[f] = data[:, i]
    path = Path(path)
    with io.atomic_path(path, suffix=".ply") as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp))
    return path


def read_ply(path: str | Path) -> GaussianSet:
    """A :class:`GaussianSet` from a 3DGS PLY (this module's or the reference implementation's);
    :class:`DataError` when the file is not one."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
    except Exception as e:  # plyfile raises several types for malformed files
        raise DataError(path, f"not a readable PLY ({type(e).__name__}: {str(e)[:120]})") from None
    names = [p.name for p in v.properties]
    rest = sorted((f for f in names if f.startswith("f_rest_")), key=lambda f: int(f.split("_")[-1]))
    k = 1 + len(rest) // 3
    need = ply_fields(int(round(k**0.5)) - 1)
    missing = [f for f in need if f not in names and f not in ("nx", "ny", "nz")]
    if missing or len(rest) % 3 or num_sh_bases(int(round(k**0.5)) - 1) != k:
        raise DataError(path, f"not a 3DGS PLY (missing {', '.join(missing[:6]) or 'a whole set of f_rest_*'})")

    def col(*fs: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[f], dtype=np.float32) for f in fs], axis=1))

    n = len(v["x"])
    dc = col("f_dc_0", "f_dc_1", "f_dc_2")[:, None]  # [N, 1, 3]
    higher = col(*rest).reshape(n, 3, k - 1).transpose(1, 2) if rest else dc.new_zeros(n, 0, 3)
    return GaussianSet(means=col("x", "y", "z"), quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
                       log_scales=col("scale_0", "scale_1", "scale_2"), opacity_logits=col("opacity")[:, 0],
                       colors=torch.cat((dc, higher), dim=1), sh_degree=int(round(k**0.5)) - 1)


def _splat_bytes(gs: GaussianSet) -> bytes:
    means = gs.means.detach().cpu().float()
    scales = torch.exp(gs.log_scales.detach().cpu().float())
    opacity = torch.sigmoid(gs.opacity_logits.detach().cpu().float())
    rgb = (0.5 + C0 * sh_coefficients(gs)[:, 0].detach().cpu().float()).clamp(0, 1)
    q = torch.nn.functional.normalize(gs.quats.detach().cpu().float(), dim=-1)
    order = torch.argsort(-(scales.prod(-1) * opacity), stable=True)
    rgba = torch.cat((rgb, opacity[:, None]), dim=1)
    n = means.shape[0]
    rec = np.empty(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = means[order].numpy()
    rec["scale"] = scales[order].numpy()
    rec["rgba"] = (rgba[order] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    rec["rot"] = (q[order] * 128.0 + 128.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return rec.tobytes()


def write_splat(gs: GaussianSet, path: str | Path) -> Path:
    """Write ``gs`` in the ``.splat`` format, atomically; returns ``path``."""
    path = Path(path)
    with io.atomic_open(path, "wb") as f:
        f.write(_splat_bytes(gs))
    return path


def read_splat(path: str | Path) -> GaussianSet:
    """A :class:`GaussianSet` (RGB colour) from a ``.splat`` file; :class:`DataError` when it is not one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    if len(raw) % 32:
        raise DataError(path, f"not a .splat file ({len(raw)} bytes is not a multiple of 32)")
    rec = np.frombuffer(raw, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rgba = torch.from_numpy(rec["rgba"].astype(np.float32) / 255.0)
    a = rgba[:, 3].clamp(1e-6, 1 - 1e-6)
    return GaussianSet(means=torch.from_numpy(rec["pos"].copy()),
                       quats=torch.from_numpy((rec["rot"].astype(np.float32) - 128.0) / 128.0),
                       log_scales=torch.log(torch.from_numpy(rec["scale"].copy()).clamp_min(1e-30)),
                       opacity_logits=torch.log(a / (1 - a)), colors=rgba[:, :3].contiguous(), sh_degree=0)


def export_gaussians(expert: torch.nn.Module, times: list[float], out: str | Path, fmt: str = "ply") -> list[Path]:
    """Write ``expert.gaussians_at(t)`` for each of ``times`` in format ``fmt`` (``ply`` or ``splat``).

    One time writes ``out`` itself; several write ``<out stem>_<i, 4 digits><suffix>`` beside it.
    Returns the paths written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    write = write_ply if fmt == "ply" else write_splat
    suffix = out.suffix or f".{fmt}"
    paths = [out.with_suffix(suffix)] if len(times) == 1 else [
        out.with_name(f"{out.stem}_{i:04d}{suffix}") for i in range(len(times))]
    was_training = expert.training
    expert.eval()
    done: list[Path] = []
    try:
        with torch.no_grad():
            for t, p in zip(times, paths):
                done.append(write(expert.gaussians_at(float(t)), p))
    except BaseException:  # a sequence is written whole or not at all
        for p in done:
            p.unlink(missing_ok=True)
        raise
    finally:
        expert.train(was_training)
    return paths
