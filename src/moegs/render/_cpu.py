"""The ``cpu`` backend: compiled C++/OpenMP tile compositing with a hand-written backward.

The extension (``csrc/``) is compiled on first use with
``torch.utils.cpp_extension.load`` and cached under ``$MOEGS_CACHE_DIR`` (default
``~/.cache/moegs``), in a folder keyed by a hash of the sources, the compiler
flags, the CPU model and the torch/Python versions: the build uses
``-march=native``, so a cache must never be reused on a different CPU.

``available()`` / ``build_error()`` tell whether it could be built; the
``"auto"`` backend falls back to the torch reference when it cannot.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .projection import TILE_SIZE, TileBins

__all__ = ["available", "build_error", "composite_cpu"]

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("ext.cpp", "composite_cpu.cpp")
_HEADERS = ("composite.h",)
_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-DNDEBUG")
_LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _cpu_model() -> str:
    """CPU model and instruction-set flags (what ``-march=native`` depends on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in info.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(dict.fromkeys(keep))  # one line per distinct value


def _build_dir() -> tuple[str, Path]:
    h = hashlib.sha256()
    for f in _SOURCES + _HEADERS:
        h.update((_CSRC / f).read_bytes())
    for part in (*_CFLAGS, *_LDFLAGS, _cpu_model(), torch.__version__, sys.version):
        h.update(part.encode())
    key = h.hexdigest()[:16]
    root = Path(os.environ.get("MOEGS_CACHE_DIR") or Path.home() / ".cache" / "moegs")
    return f"moegs_composite_cpu_{key}", root / f"composite_cpu_{key}"


def _load() -> ModuleType | None:
    global _module, _error, _tried
    with _lock:
        if _tried:
            return _module
        _tried = True
        try:
            from torch.utils.cpp_extension import load

            name, build_dir = _build_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            if not any(build_dir.glob(f"{name}*.so")):
                print("moegs: compiling the CPU rasterizer (once, ~1 min)…", file=sys.stderr, flush=True)
            _module = load(
                name=name,
                sources=[str(_CSRC / f) for f in _SOURCES],
                extra_cflags=list(_CFLAGS),
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(build_dir),
                verbose=False,
            )
        except Exception as e:  # compiler missing, build failure, unwritable cache...
            msg = f"{type(e).__name__}: {e}".strip()
            _error = msg if len(msg) <= 2000 else "…" + msg[-2000:]
        return _module


def available() -> bool:
    """Whether the compiled CPU rasterizer can be used (builds it on the first call)."""
    return _load() is not None


def build_error() -> str | None:
    """Why the compiled CPU rasterizer is unavailable, or ``None`` if it is available."""
    _load()
    return _error


def _require() -> ModuleType:
    module = _load()
    if module is None:
        raise RuntimeError(
            f"moegs: the compiled CPU rasterizer is unavailable ({_error}); "
            "install a C++ compiler with OpenMP support, or use backend='torch'"
        )
    return module


class _CompositeCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, offsets, flatten_ids, dims):
        out, alpha, final_t, last = _require().forward(means2d, conics, opacities, features, offsets, flatten_ids, *dims)
        ctx.save_for_backward(means2d, conics, opacities, features, offsets, flatten_ids, final_t, last)
        ctx.dims = dims
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_alpha):
        means2d, conics, opacities, features, offsets, flatten_ids, final_t, last = ctx.saved_tensors
        grads = _require().backward(
            means2d, conics, opacities, features, offsets, flatten_ids, final_t, last,
            grad_out.to(features.dtype).contiguous(), grad_alpha.to(features.dtype).contiguous(), *ctx.dims,
        )
        return (*grads, None, None, None)


def composite_cpu(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] in (0, 1)
    features: Tensor,  # [N, D]
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite per-Gaussian features into an image (same semantics as ``composite_torch``).

    Args:
        means2d, conics, opacities, features: screen-space Gaussians (see ``Projected``), float32
            or float64 (all are cast to ``means2d``'s dtype), ``D >= 1``.
        bins: per-tile depth-sorted Gaussian lists from ``bin_gaussians`` (same ``tile_size``).
        width, height: image size.

    Returns:
        ``[H, W, D]`` composited features and ``[H, W]`` accumulated alpha; differentiable
        w.r.t. ``means2d``, ``conics``, ``opacities`` and ``features``.
    """
    dt = means2d.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"composite_cpu supports float32 and float64, got {dt}")
    if features.dim() != 2 or features.shape[1] < 1:
        raise ValueError(f"features must be [N, D] with D >= 1, got {tuple(features.shape)}")
    dims = (int(width), int(height), bins.tiles_x, bins.tiles_y, int(tile_size))
    out, alpha = _CompositeCpu.apply(
        means2d.contiguous(), conics.to(dt).contiguous(), opacities.to(dt).contiguous(),
        features.to(dt).contiguous(), bins.offsets.contiguous(), bins.flatten_ids.contiguous(), dims,
    )
    return out, alpha
