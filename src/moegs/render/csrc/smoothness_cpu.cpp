// CPU implementation of the fused neighbour smoothness (forward and hand-written backward).
//
// Semantics are those of the pure-PyTorch reference (moegs/experts/embedding.py, _KnnSmoothness):
// per pair the difference e_j - e_i of a Gaussian's vector and its neighbour's, its squared norm
// times the pair's weight, plus 1e-20, square-rooted; the backward's per-pair vector
// p = scale w / s (e_j - e_i) is added to the neighbour's row and subtracted from the Gaussian's
// own, so identical vectors (clones) get exactly zero. No [N, k, D] tensor is made: each pass
// gathers the rows it needs.
//
// Parallelism: OpenMP over Gaussians with at::get_num_threads() threads; every output row is
// written by one thread, summing in a fixed order (results do not depend on the thread count).

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "smoothness.h"

namespace {

constexpr double kEps = 1e-20;

template <typename scalar_t>
inline scalar_t PairTerm(const scalar_t* ei, const scalar_t* ej, int64_t D, scalar_t w) {
  scalar_t d2 = 0;
  for (int64_t c = 0; c < D; ++c) {
    const scalar_t d = ej[c] - ei[c];
    d2 += d * d;
  }
  return std::sqrt(d2 * w + scalar_t(kEps));
}

template <typename scalar_t>
void ForwardKernel(const scalar_t* emb, const int64_t* idx, const scalar_t* w, int64_t N, int64_t k, int64_t D,
                   scalar_t* s) {
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = i * k + j;
      s[p] = PairTerm(emb + i * D, emb + idx[p] * D, D, w[p]);
    }
  }
}

template <typename scalar_t>
void BackwardKernel(const scalar_t* emb, const int64_t* idx, const scalar_t* w, const scalar_t* s,
                    const int64_t* rev_ptr, const int64_t* rev_pairs, int64_t N, int64_t k, int64_t D,
                    scalar_t scale, scalar_t* grad) {
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> in(D), out(D);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < N; ++m) {
      std::fill(in.begin(), in.end(), scalar_t(0));
      std::fill(out.begin(), out.end(), scalar_t(0));
      // pairs whose neighbour is m: + p, in pair order
      for (int64_t r = rev_ptr[m]; r < rev_ptr[m + 1]; ++r) {
        const int64_t p = rev_pairs[r], i = p / k;
        const scalar_t c = (w[p] / s[p]) * scale;
        const scalar_t* ei = emb + i * D;
        const scalar_t* ej = emb + m * D;
        for (int64_t d = 0; d < D; ++d) in[d] += (ej[d] - ei[d]) * c;
      }
      // m's own pairs: - p
      for (int64_t j = 0; j < k; ++j) {
        const int64_t p = m * k + j;
        const scalar_t c = (w[p] / s[p]) * scale;
        const scalar_t* ei = emb + m * D;
        const scalar_t* ej = emb + idx[p] * D;
        for (int64_t d = 0; d < D; ++d) out[d] += (ej[d] - ei[d]) * c;
      }
      for (int64_t d = 0; d < D; ++d) grad[m * D + d] = in[d] - out[d];
    }
  }
}

// Shapes, dtypes and devices; with `range`, also every index in [0, N) (a serial pass: the backward,
// which receives the forward's tensors, skips it).
void CheckInputs(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w, bool range) {
  TORCH_CHECK(emb.device().is_cpu() && idx.device().is_cpu() && w.device().is_cpu(),
              "smoothness: CPU tensors only");
  TORCH_CHECK(emb.scalar_type() == at::kFloat || emb.scalar_type() == at::kDouble,
              "smoothness: emb must be float32 or float64");
  TORCH_CHECK(emb.dim() == 2 && emb.is_contiguous(), "smoothness: emb must be contiguous [N, D]");
  const int64_t N = emb.size(0);
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 2 && idx.size(0) == N && idx.is_contiguous(),
              "smoothness: idx must be contiguous int64 [N, k]");
  TORCH_CHECK(w.scalar_type() == emb.scalar_type() && w.sizes() == idx.sizes() && w.is_contiguous(),
              "smoothness: w must be contiguous [N, k] of emb's dtype");
  if (!range) return;
  const int64_t* ip = idx.data_ptr<int64_t>();
  bool in_range = true;
  for (int64_t p = 0; p < idx.numel(); ++p) {
    in_range &= ip[p] >= 0 && ip[p] < N;
  }
  TORCH_CHECK(in_range, "smoothness: idx must lie in [0, N)");
}

}  // namespace

at::Tensor SmoothnessForwardCpu(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w) {
  const int64_t N = emb.size(0), k = idx.size(1), D = emb.size(1);
  auto s = at::empty({N, k}, emb.options());
  AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "smoothness_forward_cpu", [&] {
    ForwardKernel<scalar_t>(emb.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), w.data_ptr<scalar_t>(), N, k, D,
                            s.data_ptr<scalar_t>());
  });
  return s;
}

at::Tensor SmoothnessBackwardCpu(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w,
                                 const at::Tensor& s, const at::Tensor& rev_ptr, const at::Tensor& rev_pairs,
                                 double scale) {
  const int64_t N = emb.size(0), k = idx.size(1), D = emb.size(1);
  auto grad = at::empty({N, D}, emb.options());
  AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "smoothness_backward_cpu", [&] {
    BackwardKernel<scalar_t>(emb.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
                             s.data_ptr<scalar_t>(), rev_ptr.data_ptr<int64_t>(), rev_pairs.data_ptr<int64_t>(), N,
                             k, D, static_cast<scalar_t>(scale), grad.data_ptr<scalar_t>());
  });
  return grad;
}

at::Tensor SmoothnessForward(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w) {
  CheckInputs(emb, idx, w, /*range=*/true);
  return SmoothnessForwardCpu(emb, idx, w);
}

at::Tensor SmoothnessBackward(const at::Tensor& emb, const at::Tensor& idx, const at::Tensor& w, const at::Tensor& s,
                              const at::Tensor& rev_ptr, const at::Tensor& rev_pairs, double scale) {
  CheckInputs(emb, idx, w, /*range=*/false);
  const int64_t N = emb.size(0);
  TORCH_CHECK(s.scalar_type() == emb.scalar_type() && s.sizes() == idx.sizes() && s.is_contiguous(),
              "smoothness: s must be contiguous [N, k] of emb's dtype");
  TORCH_CHECK(rev_ptr.scalar_type() == at::kLong && rev_ptr.dim() == 1 && rev_ptr.size(0) == N + 1 &&
                  rev_ptr.is_contiguous(),
              "smoothness: rev_ptr must be contiguous int64 [N + 1]");
  TORCH_CHECK(rev_pairs.scalar_type() == at::kLong && rev_pairs.dim() == 1 && rev_pairs.size(0) == idx.numel() &&
                  rev_pairs.is_contiguous(),
              "smoothness: rev_pairs must be contiguous int64 [N k]");
  if (N) {
    const int64_t* rp = rev_ptr.data_ptr<int64_t>();
    TORCH_CHECK(rp[0] == 0 && rp[N] == idx.numel(), "smoothness: rev_ptr must span the N k pairs");
  }
  return SmoothnessBackwardCpu(emb, idx, w, s, rev_ptr, rev_pairs, scale);
}
