"""Fused neighbour smoothness of per-Gaussian vectors: one compiled C++/OpenMP pass each way.

Written with torch ops, E-D3DGS's embedding smoothness gathers an ``[N, k, D]`` tensor of
neighbour differences and makes several more of that size forward and backward, the largest cost of
the expert's training step besides its networks (``python benchmarks/train_step.py --experts
embedding``); this op gathers the rows it needs in each pass and keeps only the ``[N, k]`` per-pair
terms. The
reference with the same semantics is :func:`moegs.experts.embedding.knn_smoothness` with
``backend="torch"``.

Threads: ``torch.get_num_threads()``, like the other native ops; every output row is written by one
thread in a fixed order, so results do not depend on the thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..render._cpu import NATIVE, NativeOps

__all__ = ["SMOOTHNESS", "smoothness_cpu"]

SMOOTHNESS = NativeOps(NATIVE, "smoothness", "CPU neighbour smoothness")
"""The op family (``SMOOTHNESS.chooses(backend, x, ...)`` picks it or the reference)."""
_require = SMOOTHNESS.require


class _Smoothness(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb, idx, w, rev_ptr, rev_pairs):
        s = _require().forward(emb, idx, w)
        ctx.save_for_backward(emb, idx, w, s, rev_ptr, rev_pairs)
        return s.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        emb, idx, w, s, rev_ptr, rev_pairs = ctx.saved_tensors
        scale = float(grad) / max(1, s.numel())
        return _require().backward(emb, idx, w, s, rev_ptr, rev_pairs, scale), None, None, None, None


def smoothness_cpu(
    emb: Tensor,  # [N, D]
    idx: Tensor,  # [N, k]
    w: Tensor,  # [N, k]
    scatter: Tensor,  # [N, N * k] sparse CSR
) -> Tensor:
    """``mean_ij sqrt(w_ij |emb[idx_ij] - emb_i|^2 + 1e-20)`` (arguments as for
    :func:`moegs.experts.embedding.knn_smoothness`; ``scatter``'s CSR arrays give each Gaussian the
    pairs it is the neighbour of). Differentiable w.r.t. ``emb`` only."""
    return _Smoothness.apply(emb.contiguous(), idx.contiguous(), w.to(emb.dtype).contiguous(),
                             scatter.crow_indices().long(), scatter.col_indices().long())
