"""The ``cpu`` backend: compiled C++/OpenMP tile compositing with a hand-written backward.

Every native op family (compositing, projection and binning, HexPlane sampling, expert motion, SSIM) is
one submodule of a single extension (``csrc/``), compiled on first use with
``torch.utils.cpp_extension.load`` and cached under ``$MOEGS_CACHE_DIR`` (default
``~/.cache/moegs``), in a folder keyed by a hash of the sources, the compiler
flags, the CPU model and the torch/Python versions: the build uses
``-march=native``, so a cache must never be reused on a different CPU. No file
includes ``<torch/extension.h>``: only the binding file (``ext.cpp``) includes pybind11
and torch's Tensor casters, the kernels include light ATen headers, and ninja
compiles them all in parallel.

``available()`` / ``build_error()`` tell whether it could be built; the
``"auto"`` backend falls back to the torch reference when it cannot.
"""

from __future__ import annotations

import fcntl
import hashlib
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..io import cache_dir
from .projection import TILE_SIZE, TileBins

__all__ = ["NATIVE", "NativeExtension", "NativeOps", "available", "build_error", "composite_cpu"]

_CSRC = Path(__file__).resolve().parent / "csrc"
_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-DNDEBUG")
_LDFLAGS = ("-fopenmp",)


def _cpu_model() -> str:
    """CPU model and instruction-set flags (what ``-march=native`` depends on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in info.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(dict.fromkeys(keep))  # one line per distinct value


class NativeExtension:
    """A compiled extension of ``csrc/`` (built on first use, cached, thread-safe).

    Args:
        name: extension name (also the cache folder's prefix).
        sources: ``.cpp`` files under ``csrc/``.
        headers: headers they include (part of the cache key).
        what: human-readable name used in messages.
    """

    def __init__(self, name: str, sources: tuple[str, ...], headers: tuple[str, ...], what: str) -> None:
        self.name, self.sources, self.headers, self.what = name, sources, headers, what
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._error: str | None = None
        self._tried = False

    def _build_dir(self) -> tuple[str, Path]:
        h = hashlib.sha256()
        for f in self.sources + self.headers:
            h.update((_CSRC / f).read_bytes())
        for part in (*_CFLAGS, *_LDFLAGS, _cpu_model(), torch.__version__, sys.version):
            h.update(part.encode())
        key = h.hexdigest()[:16]
        return f"moegs_{self.name}_{key}", cache_dir(f"{self.name}_{key}")

    def load(self) -> ModuleType | None:
        """The compiled module, or ``None`` when it cannot be built (see :meth:`error`)."""
        with self._lock:
            if self._tried:
                return self._module
            self._tried = True
            try:
                from torch.utils.cpp_extension import load

                name, build_dir = self._build_dir()
                build_dir.mkdir(parents=True, exist_ok=True)
                # torch's own build lock is a plain file that a killed build leaves behind, and
                # every later load would wait on it forever. An flock is released by the kernel
                # when its holder dies: whoever holds it is the only builder, so a torch lock
                # file found then is stale.
                with open(build_dir / "build.flock", "w") as baton:
                    fcntl.flock(baton, fcntl.LOCK_EX)
                    (build_dir / "lock").unlink(missing_ok=True)
                    if not any(build_dir.glob(f"{name}*.so")):
                        print(f"moegs: compiling the {self.what} (once, ~30 s)…", file=sys.stderr, flush=True)
                    self._module = load(
                        name=name,
                        sources=[str(_CSRC / f) for f in self.sources],
                        extra_cflags=list(_CFLAGS),
                        extra_ldflags=list(_LDFLAGS),
                        build_directory=str(build_dir),
                        verbose=False,
                    )
            except Exception as e:  # compiler missing, build failure, unwritable cache...
                msg = f"{type(e).__name__}: {e}".strip()
                self._error = msg if len(msg) <= 2000 else "…" + msg[-2000:]
            return self._module

    def available(self) -> bool:
        """Whether the extension can be used (builds it on the first call)."""
        return self.load() is not None

    def error(self) -> str | None:
        """Why the extension is unavailable, or ``None`` if it built."""
        self.load()
        return self._error


NATIVE = NativeExtension(
    "native_cpu",
    ("ext.cpp", "composite_cpu.cpp", "project_cpu.cpp", "bin_cpu.cpp", "hexplane_cpu.cpp", "motion_cpu.cpp",
     "smoothness_cpu.cpp", "ssim_cpu.cpp"),
    ("composite.h", "project.h", "hexplane.h", "motion.h", "smoothness.h", "ssim.h"),
    "native CPU ops",
)
"""Every native op family, one submodule each (``composite``, ``project``, ``hexplane``, ``motion``, ``smoothness``,
``ssim``)."""


class NativeOps:
    """One op family of a :class:`NativeExtension`: its submodule, with the family's name in messages.

    Args:
        extension: the extension that holds the family (built on first use).
        submodule: the family's submodule in it.
        what: human-readable name of the family used in messages.
    """

    def __init__(self, extension: NativeExtension, submodule: str, what: str) -> None:
        self.extension, self.submodule, self.what = extension, submodule, what
        self._warned = False

    def available(self) -> bool:
        """Whether the family's ops can be used (builds the extension on the first call)."""
        return self.extension.available()

    def error(self) -> str | None:
        """Why the family's ops are unavailable, or ``None`` if the extension built."""
        return self.extension.error()

    def usable(self, instead: str) -> bool:
        """Whether the family's ops can be used; when they cannot, warns once that ``instead`` runs in their place."""
        if self.available():
            return True
        if not self._warned:
            warnings.warn(f"moegs: the compiled {self.what} is unavailable ({self.error()}); {instead}")
            self._warned = True
        return False

    def chooses(self, backend: str, x, instead: str) -> bool:
        """Whether an op with ``backend`` runs the family's compiled op for tensors like ``x``.

        ``"cpu"``: always; ``"torch"``: never (the reference); ``"auto"``: for float32/float64 CPU tensors
        when the extension builds (warning once that ``instead`` runs when it does not). Any other name is
        a ``ValueError``.
        """
        if backend not in ("auto", "cpu", "torch"):
            raise ValueError(f"unknown {self.submodule} backend {backend!r}; choose from auto, cpu, torch")
        return backend == "cpu" or (backend == "auto" and x.device.type == "cpu"
                                    and x.dtype in (torch.float32, torch.float64) and self.usable(instead))

    def require(self) -> ModuleType:
        """The family's compiled submodule; ``RuntimeError`` with the build error when it cannot be built."""
        module = self.extension.load()
        if module is None:
            raise RuntimeError(
                f"moegs: the compiled {self.what} is unavailable ({self.extension.error()}); "
                "install a C++ compiler with OpenMP support, or use backend='torch'"
            )
        return getattr(module, self.submodule)


_COMPOSITE = NativeOps(NATIVE, "composite", "CPU rasterizer")


available = _COMPOSITE.available
build_error = _COMPOSITE.error
_require = _COMPOSITE.require


class _CompositeCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, expert_ids, offsets, flatten_ids, num_experts, dims):
        out, alpha, final_t, last = _require().forward(means2d, conics, opacities, features, expert_ids, num_experts,
                                                       offsets, flatten_ids, *dims)
        ctx.save_for_backward(means2d, conics, opacities, features, expert_ids, offsets, flatten_ids, final_t, last)
        ctx.num_experts, ctx.dims = num_experts, dims
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_alpha):
        means2d, conics, opacities, features, expert_ids, offsets, flatten_ids, final_t, last = ctx.saved_tensors
        grads = _require().backward(
            means2d, conics, opacities, features, expert_ids, ctx.num_experts, offsets, flatten_ids, final_t, last,
            grad_out.to(features.dtype).contiguous(), grad_alpha.to(features.dtype).contiguous(), *ctx.dims,
        )
        return (*grads, None, None, None, None, None)


def composite_cpu(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] in (0, 1)
    features: Tensor,  # [N, D]
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    *,
    expert_ids: Tensor | None = None,  # [N] int
    num_experts: int = 1,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite per-Gaussian features into an image, or one image per expert in one pass
    (same semantics as ``composite_torch``).

    Args:
        means2d, conics, opacities, features: screen-space Gaussians (see ``Projected``), float32
            or float64 (all are cast to ``means2d``'s dtype), ``D >= 1``.
        bins: per-tile depth-sorted Gaussian lists from ``bin_gaussians`` (same ``tile_size``).
        width, height: image size.
        expert_ids: ``[N]`` expert of each Gaussian in ``[0, num_experts)``; each expert gets its own
            transmittance and image, as if rendered alone.
        num_experts: ``E``, the number of images when ``expert_ids`` is given.

    Returns:
        ``[H, W, D]`` composited features and ``[H, W]`` accumulated alpha (``[E, H, W, D]`` and
        ``[E, H, W]`` with ``expert_ids``); differentiable w.r.t. ``means2d``, ``conics``,
        ``opacities`` and ``features``.
    """
    dt = means2d.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"composite_cpu supports float32 and float64, got {dt}")
    if features.dim() != 2 or features.shape[1] < 1:
        raise ValueError(f"features must be [N, D] with D >= 1, got {tuple(features.shape)}")
    ids = means2d.new_zeros(0, dtype=torch.int32) if expert_ids is None else expert_ids.to(torch.int32).contiguous()
    E = 1 if expert_ids is None else int(num_experts)
    dims = (int(width), int(height), bins.tiles_x, bins.tiles_y, int(tile_size))
    out, alpha = _CompositeCpu.apply(
        means2d.contiguous(), conics.to(dt).contiguous(), opacities.to(dt).contiguous(),
        features.to(dt).contiguous(), ids, bins.offsets.contiguous(), bins.flatten_ids.contiguous(), E, dims,
    )
    return (out[0], alpha[0]) if expert_ids is None else (out, alpha)


def composite_weights_cpu(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    *,
    expert_ids: Tensor | None = None,  # [N] int
    num_experts: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The compositing weights ``w_i(p) = alpha_i T_i`` of :func:`composite_cpu` as a sparse matrix.

    For any features ``f`` ``[N, D]``, ``composite_cpu(..., f, ...)`` equals ``W @ f`` reshaped to
    ``[E, H, W, D]`` (``E = 1`` without ``expert_ids``), with ``W`` the ``[E * H * W, N]`` matrix whose
    row ``e * H * W + y * W + x`` holds the weights of expert ``e``'s pixel ``(x, y)``.

    Returns:
        CSR arrays of ``W`` (not differentiable): ``crow`` ``[E * H * W + 1]`` int32, ``col`` ``[nnz]``
        int32 (front to back within a row) and ``val`` ``[nnz]`` (``means2d``'s dtype); then those of
        ``W^T`` ``[N, E * H * W]``: ``[N + 1]``, ``[nnz]`` (ascending within a row), ``[nnz]``.
    """
    dt = means2d.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"composite_weights_cpu supports float32 and float64, got {dt}")
    ids = means2d.new_zeros(0, dtype=torch.int32) if expert_ids is None else expert_ids.to(torch.int32).contiguous()
    E = 1 if expert_ids is None else int(num_experts)
    with torch.no_grad():
        return _require().weights(
            means2d.detach().contiguous(), conics.detach().to(dt).contiguous(), opacities.detach().to(dt).contiguous(),
            ids, E, bins.offsets.contiguous(), bins.flatten_ids.contiguous(), int(width), int(height), bins.tiles_x,
            bins.tiles_y, int(tile_size),
        )
