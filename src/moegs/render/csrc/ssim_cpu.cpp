// CPU implementation of the fused SSIM and L1 (forward and hand-written backward).
//
// Semantics are those of the pure-PyTorch reference (moegs/eval/metrics.py, ssim): the five
// moments x, y, x x, y y, x y of each channel are filtered with the 2D window taps taps^T and
// zero padding K / 2, then combined per pixel into the SSIM map, whose mean is returned. The
// window is separable, so each map is filtered by a horizontal then a vertical pass of K taps
// (2K multiply-adds per pixel instead of K^2); taps outside the image are dropped, exactly as
// conv2d's zero padding drops them.
//
// Layout: images are [B, H, W, C] (channels last, as the renderer writes them). A row of one
// image is L = W C values with the channels interleaved, so the horizontal tap t of every
// channel is the value t C further along the row, and both passes are plain loops over the L
// values of a row that the compiler vectorises.
//
// Backward: with S = A B / (C D), A = 2 mu_x mu_y + c1, B = 2 (E[xy] - mu_x mu_y) + c2,
// C = mu_x^2 + mu_y^2 + c1, D = E[x^2] - mu_x^2 + E[y^2] - mu_y^2 + c2, the forward stores per pixel
//   dS/dE[xy]  = 2 A / (C D),
//   dS/dE[x^2] = -S / D,
//   dS/dmu_x   = 2 mu_y (B - A) / (C D) + 2 mu_x S (1 / D - 1 / C),
// and the backward filters these three maps with the (symmetric, so self-transposed) window:
//   dL/dx = g (G d_mu + 2 x G d_ex2 + y G d_exy),  g = dL/dS of each pixel.
//
// L1: the forward also returns mean |x - y| (summed while the horizontal pass reads each row),
// and the backward adds l1_scale sgn(x - y), so the photometric loss (1 - l) L1 + l (1 - SSIM)
// is one op each way.
//
// Precision: the filtering and the per-pixel arithmetic run in the input dtype, as the
// reference's conv2d does; the mean is accumulated in double.
//
// Parallelism: OpenMP over image rows with at::get_num_threads() threads (the same count as
// torch's intra-op pool). Each pass writes only its own rows, the mean sums per-row partial
// sums in row order: no atomics, results independent of the thread count.

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ssim.h"

namespace {

// out[k] = sum_t w[t] src[k + t stride] for k < L, one tap at a time over the whole row (a row
// of one map stays in L1; the loop over k vectorises without gathers).
template <typename T>
inline void Filter(const T* src, int64_t stride, const T* w, int64_t taps, int64_t L, T* out) {
  std::fill(out, out + L, T(0));
  for (int64_t t = 0; t < taps; ++t) {
    const T wt = w[t];
    const T* s = src + t * stride;
#pragma omp simd
    for (int64_t k = 0; k < L; ++k) out[k] += wt * s[k];
  }
}

// Horizontal pass of M maps over `rows` rows of L = W C values: out[m][r] = taps * map_m(row r)
// along W, per channel, zero padded. `load(r, dst, stride)` writes map m of row r at
// dst + m stride (L values each).
template <typename T, int M, typename Load>
void HorizontalPass(int64_t rows, int64_t W, int64_t C, const T* taps, int64_t K, Load load, T* out) {
  const int64_t L = W * C, R = K / 2, P = L + 2 * R * C;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<T> pad(M * P, T(0));  // each map's row between R C zeros on either side
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      load(r, pad.data() + R * C, P);
      for (int m = 0; m < M; ++m) Filter(pad.data() + m * P, C, taps, K, L, out + (m * rows + r) * L);
    }
  }
}

// Vertical pass of the M horizontally filtered maps `h` ([M][B H][L]), image by image, zero
// padded (only the taps inside the image); `finish(r, v, stride)` receives row r of the fully
// filtered maps (map m at v + m stride).
template <typename T, int M, typename Finish>
void VerticalPass(int64_t B, int64_t H, int64_t L, const T* taps, int64_t K, const T* h, Finish finish) {
  const int64_t rows = B * H, R = K / 2;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<T> v(M * L);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = r % H;
      const int64_t lo = std::max(-R, -i), hi = std::min(R, H - 1 - i);
      for (int m = 0; m < M; ++m)
        Filter(h + (m * rows + r + lo) * L, L, taps + R + lo, hi - lo + 1, L, v.data() + m * L);
      finish(r, v.data(), L);
    }
  }
}

// Returns {mean SSIM, mean |x - y|}.
template <typename T>
std::pair<double, double> ForwardKernel(int64_t B, int64_t H, int64_t W, int64_t C, const T* x, const T* y,
                                        const T* taps, int64_t K, T c1, T c2, T* d_mu, T* d_ex2, T* d_exy) {
  const int64_t rows = B * H, L = W * C;
  std::unique_ptr<T[]> h(new T[5 * rows * L]);  // every value is written by the horizontal pass
  std::vector<double> row_l1(rows);
  HorizontalPass<T, 5>(rows, W, C, taps, K, [&](int64_t r, T* dst, int64_t stride) {
    const T* xr = x + r * L;
    const T* yr = y + r * L;
    double l1 = 0;
#pragma omp simd reduction(+ : l1)
    for (int64_t k = 0; k < L; ++k) {
      const T a = xr[k], b = yr[k];
      dst[k] = a, dst[stride + k] = b, dst[2 * stride + k] = a * a, dst[3 * stride + k] = b * b;
      dst[4 * stride + k] = a * b;
      l1 += double(std::abs(a - b));
    }
    row_l1[r] = l1;
  }, h.get());
  std::vector<double> row_sum(rows);
  const bool grad = d_mu != nullptr;
  VerticalPass<T, 5>(B, H, L, taps, K, h.get(), [&](int64_t r, const T* v, int64_t stride) {
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < L; ++k) {
      const T mx = v[k], my = v[stride + k];
      const T sxx = v[2 * stride + k] - mx * mx, syy = v[3 * stride + k] - my * my;
      const T sxy = v[4 * stride + k] - mx * my;
      const T a = 2 * mx * my + c1, b = 2 * sxy + c2;
      const T c = mx * mx + my * my + c1, d = sxx + syy + c2;
      const T s = (a * b) / (c * d);
      sum += double(s);
      if (grad) {
        const T inv_cd = T(1) / (c * d);
        d_mu[r * L + k] = 2 * my * (b - a) * inv_cd + 2 * mx * s * (T(1) / d - T(1) / c);
        d_ex2[r * L + k] = -s / d;
        d_exy[r * L + k] = 2 * a * inv_cd;
      }
    }
    row_sum[r] = sum;
  });
  double total = 0, total_l1 = 0;
  for (int64_t r = 0; r < rows; ++r) total += row_sum[r], total_l1 += row_l1[r];
  return {total / double(rows * L), total_l1 / double(rows * L)};
}

// sgn(d) as torch's L1 backward takes it (0 at d = 0).
template <typename T>
inline T Sign(T d) {
  return T((d > T(0)) - (d < T(0)));
}

template <typename T>
void BackwardKernel(int64_t B, int64_t H, int64_t W, int64_t C, const T* x, const T* y, const T* taps, int64_t K,
                    const T* d_mu, const T* d_ex2, const T* d_exy, T scale, T l1_scale, T* grad) {
  const int64_t rows = B * H, L = W * C;
  std::unique_ptr<T[]> h(new T[3 * rows * L]);
  HorizontalPass<T, 3>(rows, W, C, taps, K, [&](int64_t r, T* dst, int64_t stride) {
    std::copy(d_mu + r * L, d_mu + (r + 1) * L, dst);
    std::copy(d_ex2 + r * L, d_ex2 + (r + 1) * L, dst + stride);
    std::copy(d_exy + r * L, d_exy + (r + 1) * L, dst + 2 * stride);
  }, h.get());
  VerticalPass<T, 3>(B, H, L, taps, K, h.get(), [&](int64_t r, const T* v, int64_t stride) {
    const T* xr = x + r * L;
    const T* yr = y + r * L;
    T* gr = grad + r * L;
#pragma omp simd
    for (int64_t k = 0; k < L; ++k)
      gr[k] = scale * (v[k] + 2 * xr[k] * v[stride + k] + yr[k] * v[2 * stride + k]) + l1_scale * Sign(xr[k] - yr[k]);
  });
}

void CheckImages(const at::Tensor& img, const at::Tensor& ref, const at::Tensor& taps) {
  TORCH_CHECK(img.device().is_cpu() && ref.device().is_cpu() && taps.device().is_cpu(),
              "ssim: tensors must be on the CPU");
  const auto dt = img.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "ssim: float32 or float64 expected");
  TORCH_CHECK(img.dim() == 4, "ssim: img must be [B, H, W, C]");
  TORCH_CHECK(ref.sizes() == img.sizes() && ref.scalar_type() == dt, "ssim: ref must match img's shape and dtype");
  TORCH_CHECK(taps.dim() == 1 && taps.size(0) % 2 == 1 && taps.scalar_type() == dt,
              "ssim: taps must be [K] with K odd, of img's dtype");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> SsimForwardCpu(
    const at::Tensor& img_in, const at::Tensor& ref_in, const at::Tensor& taps_in, double c1, double c2,
    bool need_grad) {
  const auto img = img_in.contiguous(), ref = ref_in.contiguous(), taps = taps_in.contiguous();
  const int64_t B = img.size(0), H = img.size(1), W = img.size(2), C = img.size(3);
  auto opts = img.options();
  auto shape = need_grad ? img.sizes().vec() : std::vector<int64_t>{0};
  auto d_mu = at::empty(shape, opts), d_ex2 = at::empty(shape, opts), d_exy = at::empty(shape, opts);
  std::pair<double, double> means;
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "ssim_forward_cpu", [&] {
    means = ForwardKernel<scalar_t>(B, H, W, C, img.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(),
                                   taps.data_ptr<scalar_t>(), taps.size(0), scalar_t(c1), scalar_t(c2),
                                   need_grad ? d_mu.data_ptr<scalar_t>() : nullptr,
                                   need_grad ? d_ex2.data_ptr<scalar_t>() : nullptr,
                                   need_grad ? d_exy.data_ptr<scalar_t>() : nullptr);
  });
  return {at::scalar_tensor(means.first, opts), at::scalar_tensor(means.second, opts), d_mu, d_ex2, d_exy};
}

at::Tensor SsimBackwardCpu(const at::Tensor& img_in, const at::Tensor& ref_in, const at::Tensor& taps_in,
                           const at::Tensor& d_mu_in, const at::Tensor& d_ex2_in, const at::Tensor& d_exy_in,
                           double scale, double l1_scale) {
  const auto img = img_in.contiguous(), ref = ref_in.contiguous(), taps = taps_in.contiguous();
  const auto d_mu = d_mu_in.contiguous(), d_ex2 = d_ex2_in.contiguous(), d_exy = d_exy_in.contiguous();
  const int64_t B = img.size(0), H = img.size(1), W = img.size(2), C = img.size(3);
  auto grad = at::empty_like(img);
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "ssim_backward_cpu", [&] {
    BackwardKernel<scalar_t>(B, H, W, C, img.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(),
                             taps.data_ptr<scalar_t>(), taps.size(0), d_mu.data_ptr<scalar_t>(),
                             d_ex2.data_ptr<scalar_t>(), d_exy.data_ptr<scalar_t>(), scalar_t(scale),
                             scalar_t(l1_scale), grad.data_ptr<scalar_t>());
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> SsimForward(
    const at::Tensor& img, const at::Tensor& ref, const at::Tensor& taps, double c1, double c2, bool need_grad) {
  CheckImages(img, ref, taps);
  return SsimForwardCpu(img, ref, taps, c1, c2, need_grad);
}

at::Tensor SsimBackward(const at::Tensor& img, const at::Tensor& ref, const at::Tensor& taps, const at::Tensor& d_mu,
                        const at::Tensor& d_ex2, const at::Tensor& d_exy, double scale, double l1_scale) {
  CheckImages(img, ref, taps);
  for (const at::Tensor* t : {&d_mu, &d_ex2, &d_exy})
    TORCH_CHECK(t->sizes() == img.sizes() && t->scalar_type() == img.scalar_type(),
                "ssim: d_mu, d_ex2 and d_exy must match img's shape and dtype");
  return SsimBackwardCpu(img, ref, taps, d_mu, d_ex2, d_exy, scale, l1_scale);
}
