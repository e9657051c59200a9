"""Process-wide settings for training on a CPU, which the ``moegs`` command line applies at start.

Library users get the same behaviour by calling :func:`tune_allocator` once in their own scripts; the
library itself never changes process-wide state on import.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from the heap instead of their own mmap: every per-step tensor of a training
# step (gradients, Adam's inputs, rendered images) at the scene sizes moegs trains on a CPU.
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit systems
# Free memory at the top of the heap is handed back to the OS only beyond this.
TRIM_THRESHOLD = 256 << 20


def tune_allocator() -> bool:
    """Keep glibc's malloc from returning tensor-sized blocks to the OS after every training step.

    By default glibc serves large blocks with their own ``mmap`` and unmaps them when freed, so each step's
    gradients and intermediate tensors (a few MB each) are mapped again and page-faulted in, zero-filled
    by the kernel, on every step. This sets ``M_MMAP_THRESHOLD`` to :data:`MMAP_THRESHOLD` and
    ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` (at most that much freed memory stays mapped).
    ``python benchmarks/train_step.py --no-tune-allocator`` measures the difference.

    Returns:
        ``True`` when applied; ``False`` on a C library without ``mallopt`` (not glibc), or when the
        user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (their choice is kept).
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_",
                                                                             "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
