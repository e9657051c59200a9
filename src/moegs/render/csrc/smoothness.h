// Fused weighted-L2 neighbour smoothness of per-Gaussian vectors (E-D3DGS's embedding smoothness),
// forward and backward.
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU implementation in
// smoothness_cpu.cpp. The autograd Function lives in Python (moegs/experts/_smoothness_cpu.py);
// the pure-PyTorch reference with the same semantics is moegs/experts/embedding.py
// (knn_smoothness with backend="torch").
#pragma once

#include <ATen/core/Tensor.h>

// Per-pair terms s[i, j] = sqrt(w[i, j] |emb[idx[i, j]] - emb[i]|^2 + 1e-20) on the CPU.
//
// Args:
//   emb: [N, D] float32/float64; idx: [N, k] int64 neighbour indices in [0, N); w: [N, k] emb's dtype.
//
// Returns:
//   s: [N, k] (the loss is its mean).
at::Tensor SmoothnessForwardCpu(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w);

// Backward of the mean of SmoothnessForwardCpu's terms, scaled by `scale` (dL/dmean / (N k)).
//
// With p[i, j] = scale w[i, j] / s[i, j] (emb[idx[i, j]] - emb[i]), the gradient of row m is
// the sum of p over the pairs whose neighbour is m, in pair order (rev_ptr / rev_pairs: the pairs
// (i k + j) of each neighbour, ascending), minus the sum over j of p[m, j]. Every row is summed on
// one thread in that fixed order: results do not depend on the thread count.
//
// Args:
//   emb, idx, w: as for the forward; s: [N, k] from it; rev_ptr: [N + 1] int64; rev_pairs: [N k] int64.
//
// Returns:
//   grad_emb: [N, D].
at::Tensor SmoothnessBackwardCpu(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w,
                                 const at::Tensor& s, const at::Tensor& rev_ptr, const at::Tensor& rev_pairs,
                                 double scale);

// Checked entry points bound to Python (validate, then call the *Cpu functions above; the backward takes
// the forward's emb, idx and w, whose index range the forward checked).
at::Tensor SmoothnessForward(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w);

at::Tensor SmoothnessBackward(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w, const at::Tensor& s,
                              const at::Tensor& rev_ptr, const at::Tensor& rev_pairs, double scale);
