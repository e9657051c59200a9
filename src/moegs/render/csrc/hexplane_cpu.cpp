// CPU implementation of the fused HexPlane sampler (forward and hand-written backward).
//
// Semantics are those of the pure-PyTorch reference (moegs/experts/hexplane.py, sample_planes_torch):
// for every plane, F.grid_sample(mode="bilinear", padding_mode="border", align_corners=True) at the
// plane's coordinate pair, then the product over the planes. Along an axis of `size` cells the
// coordinate u maps to p = (u + 1) (size - 1) / 2, clamped to [0, size - 1]; dp/du is (size - 1) / 2
// strictly inside and 0 once clamped (at the border itself too), exactly as grid_sample's gradient.
// A NaN coordinate reads the first cell (grid_sample would return NaN).
//
// Precision: the arithmetic is done in the inputs' dtype, in the same order as grid_sample's, so
// float32 results agree with the reference to a few ulp.
//
// Parallelism (at::get_num_threads() threads, the same count as torch's intra-op pool):
//   in the forward and the first backward pass each thread owns a contiguous range of Gaussians and
//   writes only their rows; the plane gradients are scattered by a second pass in which each thread
//   owns a contiguous range of channels (a private channels-last buffer for them) and walks all
//   Gaussians in order. No atomics; every sum has a fixed order, so results do not depend on the
//   thread count. Loops run plane by plane, so the plane being read or written stays in cache
//   (a level's planes together may not).

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <omp.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "hexplane.h"

namespace {

constexpr int kLanes = 8;  // partial sums of the channel reductions

// Bilinear footprint of one coordinate pair in one [C, H, W] plane.
template <typename T>
struct Tap {
  int64_t idx[4];  // flat cells y * W + x of the corners (x0, y0), (x1, y0), (x0, y1), (x1, y1)
  T w[4];          // their bilinear weights
  T fx, fy;        // fractional position (weights of x1 and y1)
  T sx, sy;        // d position / d coordinate: (size - 1) / 2, or 0 where clamped
};

// Unnormalised position along an axis of `size` cells, clamped to [0, size - 1]; `scale` gets its derivative.
template <typename T>
inline T Position(T coord, int64_t size, T& scale) {
  const T s = static_cast<T>(size - 1) / 2;
  const T hi = static_cast<T>(size - 1);
  const T p = (coord + 1) * s;
  if (p > 0 && p < hi) {
    scale = s;
    return p;
  }
  scale = 0;
  return p >= hi ? hi : T(0);
}

template <typename T>
inline Tap<T> MakeTap(T cx, T cy, int64_t H, int64_t W) {
  Tap<T> t;
  const T px = Position(cx, W, t.sx), py = Position(cy, H, t.sy);
  const int64_t x0 = static_cast<int64_t>(px), y0 = static_cast<int64_t>(py);  // p >= 0: truncation is floor
  // A corner beyond the last cell only occurs at p = size - 1, where its weight is 0: read the last cell.
  const int64_t x1 = std::min(x0 + 1, W - 1), y1 = std::min(y0 + 1, H - 1);
  t.fx = px - static_cast<T>(x0), t.fy = py - static_cast<T>(y0);
  const T ex = 1 - t.fx, ey = 1 - t.fy;
  t.idx[0] = y0 * W + x0, t.idx[1] = y0 * W + x1, t.idx[2] = y1 * W + x0, t.idx[3] = y1 * W + x1;
  t.w[0] = ey * ex, t.w[1] = ey * t.fx, t.w[2] = t.fy * ex, t.w[3] = t.fy * t.fx;
  return t;
}

// The planes as channels-last [H, W, C] copies (a bilinear tap then reads 4 runs of C values).
template <typename T>
struct Planes {
  std::vector<at::Tensor> hold;
  std::vector<const T*> data;
  std::vector<int64_t> H, W;
  int64_t K = 0, C = 0;

  explicit Planes(const std::vector<at::Tensor>& planes) : K(static_cast<int64_t>(planes.size())) {
    C = planes[0].size(0);
    for (const auto& p : planes) {
      hold.push_back(p.permute({1, 2, 0}).contiguous());
      data.push_back(hold.back().data_ptr<T>());
      H.push_back(p.size(1));
      W.push_back(p.size(2));
    }
  }

  Tap<T> TapAt(int64_t k, const T* x, const int64_t* axes) const {
    return MakeTap(x[axes[2 * k]], x[axes[2 * k + 1]], H[k], W[k]);
  }
};

// Sample of plane k at its tap: sum of the 4 corner runs of C channels times their weights.
template <typename T>
inline void Sample(const Planes<T>& P, int64_t k, const Tap<T>& t, T* s) {
  const int64_t C = P.C;
  const T *v0 = P.data[k] + t.idx[0] * C, *v1 = P.data[k] + t.idx[1] * C;
  const T *v2 = P.data[k] + t.idx[2] * C, *v3 = P.data[k] + t.idx[3] * C;
  for (int64_t c = 0; c < C; ++c) s[c] = t.w[0] * v0[c] + t.w[1] * v1[c] + t.w[2] * v2[c] + t.w[3] * v3[c];
}

// This thread's share [first, last) of n items, in thread order (inside a parallel region).
inline std::pair<int64_t, int64_t> ThreadRange(int64_t n) {
  const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
  return {n * tid / nt, n * (tid + 1) / nt};
}

// Every loop below runs plane by plane (plane-major) over the thread's own range of Gaussians, so
// one plane at a time is being read or written and stays in cache, with no barrier between planes.
template <typename T>
void ForwardKernel(const Planes<T>& P, const T* coords, int64_t N, int64_t D, const int64_t* axes, T* out) {
  const int64_t C = P.C;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    const auto [n0, n1] = ThreadRange(N);
    std::vector<T> s(C);
    for (int64_t k = 0; k < P.K; ++k) {
      for (int64_t n = n0; n < n1; ++n) {
        T* o = out + n * C;
        Sample(P, k, P.TapAt(k, coords + n * D, axes), k == 0 ? o : s.data());
        if (k > 0)
          for (int64_t c = 0; c < C; ++c) o[c] *= s[c];
      }
    }
  }
}

// Pass 1, over Gaussians: the taps [K, N], dL/d sample a[k, n, c] = grad[n, c] * prod_{q != k} sample_q[n, c]
// (prefix and suffix products, no division; `a` first holds the samples) and the coordinate gradients [N, D].
template <typename T>
void SampleGradKernel(const Planes<T>& P, const T* coords, int64_t N, int64_t D, const int64_t* axes,
                      const T* grad_out, Tap<T>* taps, T* a, T* grad_coords) {
  const int64_t K = P.K, C = P.C, NC = N * C;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    const auto [n0, n1] = ThreadRange(N);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = n0; n < n1; ++n) {
        const Tap<T> t = taps[k * N + n] = P.TapAt(k, coords + n * D, axes);
        Sample(P, k, t, a + k * NC + n * C);
      }
    }
    std::vector<T> suffix(K * C), prefix(C);  // suffix[k] = prod_{q > k} sample_q
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(suffix.end() - C, suffix.end(), T(1));
      for (int64_t k = K - 2; k >= 0; --k) {
        const T* sn = a + (k + 1) * NC + n * C;
        for (int64_t c = 0; c < C; ++c) suffix[k * C + c] = suffix[(k + 1) * C + c] * sn[c];
      }
      std::copy(grad_out + n * C, grad_out + (n + 1) * C, prefix.begin());
      for (int64_t k = 0; k < K; ++k) {
        T* ak = a + k * NC + n * C;
        for (int64_t c = 0; c < C; ++c) {
          const T sample = ak[c];
          ak[c] = prefix[c] * suffix[k * C + c];
          prefix[c] *= sample;
        }
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = n0; n < n1; ++n) {
        const Tap<T>& t = taps[k * N + n];
        if (t.sx == 0 && t.sy == 0) continue;
        const T *v0 = P.data[k] + t.idx[0] * C, *v1 = P.data[k] + t.idx[1] * C;
        const T *v2 = P.data[k] + t.idx[2] * C, *v3 = P.data[k] + t.idx[3] * C;
        const T* ak = a + k * NC + n * C;
        const T ex = 1 - t.fx, ey = 1 - t.fy;
        // sum_c a[c] d sample[c] / d position, over kLanes independent partial sums (vectorisable, fixed order)
        T dx[kLanes] = {}, dy[kLanes] = {};
        for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
          const int64_t lanes = std::min<int64_t>(kLanes, C - c0);
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t c = c0 + l;
            dx[l] += ak[c] * ((v1[c] - v0[c]) * ey + (v3[c] - v2[c]) * t.fy);
            dy[l] += ak[c] * ((v2[c] - v0[c]) * ex + (v3[c] - v1[c]) * t.fx);
          }
        }
        T sum_x = 0, sum_y = 0;
        for (int l = 0; l < kLanes; ++l) sum_x += dx[l], sum_y += dy[l];
        T* gx = grad_coords + n * D;
        gx[axes[2 * k]] += sum_x * t.sx;
        gx[axes[2 * k + 1]] += sum_y * t.sy;
      }
    }
  }
}

// Pass 2, over channel ranges: scatter a[k, n, c] times the tap weights into the plane gradients [C, H, W].
template <typename T>
void PlaneGradKernel(const Planes<T>& P, int64_t N, const Tap<T>* taps, const T* a,
                     const std::vector<T*>& grad_planes) {
  const int64_t K = P.K, C = P.C, NC = N * C;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    const auto [c0, c1] = ThreadRange(C);
    const int64_t Cr = c1 - c0;
    std::vector<T> buf;  // [H_k, W_k, Cr] channels-last: this thread's channels of plane k
    for (int64_t k = 0; k < K && Cr > 0; ++k) {
      const int64_t HW = P.H[k] * P.W[k];
      buf.assign(HW * Cr, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const Tap<T>& t = taps[k * N + n];
        const T* ak = a + k * NC + n * C + c0;
        for (int q = 0; q < 4; ++q) {
          T* b = buf.data() + t.idx[q] * Cr;
          const T w = t.w[q];
          for (int64_t c = 0; c < Cr; ++c) b[c] += w * ak[c];
        }
      }
      for (int64_t c = 0; c < Cr; ++c) {
        T* g = grad_planes[k] + (c0 + c) * HW;
        for (int64_t i = 0; i < HW; ++i) g[i] = buf[i * Cr + c];
      }
    }
  }
}

void CheckInputs(const std::vector<at::Tensor>& planes, const at::Tensor& coords, const std::vector<int64_t>& axes) {
  TORCH_CHECK(coords.device().is_cpu(), "hexplane: tensors must be on the CPU");
  const auto dt = coords.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "hexplane: float32 or float64 expected");
  TORCH_CHECK(coords.dim() == 2, "hexplane: coords must be [N, D]");
  TORCH_CHECK(!planes.empty(), "hexplane: at least one plane expected");
  TORCH_CHECK(axes.size() == 2 * planes.size(), "hexplane: axes must hold two coordinate columns per plane");
  for (int64_t ax : axes) TORCH_CHECK(ax >= 0 && ax < coords.size(1), "hexplane: axes must index coords' columns");
  const int64_t C = planes[0].dim() == 3 ? planes[0].size(0) : -1;
  for (const auto& p : planes) {
    TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == dt, "hexplane: planes must be CPU tensors of coords' dtype");
    TORCH_CHECK(p.dim() == 3 && p.size(0) == C, "hexplane: planes must be [C, H, W] with one C");
    TORCH_CHECK(p.size(1) >= 1 && p.size(2) >= 1, "hexplane: planes must have at least one cell");
  }
}

}  // namespace

at::Tensor HexPlaneForwardCpu(const std::vector<at::Tensor>& planes, const at::Tensor& coords_in,
                              const std::vector<int64_t>& axes) {
  const auto coords = coords_in.contiguous();
  const int64_t N = coords.size(0), D = coords.size(1);
  auto out = at::empty({N, planes[0].size(0)}, coords.options());
  AT_DISPATCH_FLOATING_TYPES(coords.scalar_type(), "hexplane_forward_cpu", [&] {
    const Planes<scalar_t> P(planes);
    ForwardKernel<scalar_t>(P, coords.data_ptr<scalar_t>(), N, D, axes.data(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> HexPlaneBackwardCpu(const std::vector<at::Tensor>& planes,
                                                                    const at::Tensor& coords_in,
                                                                    const std::vector<int64_t>& axes,
                                                                    const at::Tensor& grad_out_in) {
  const auto coords = coords_in.contiguous(), grad_out = grad_out_in.contiguous();
  const int64_t N = coords.size(0), D = coords.size(1), K = static_cast<int64_t>(planes.size());
  const int64_t C = planes[0].size(0);
  auto grad_coords = at::zeros({N, D}, coords.options());
  auto a = at::empty({K, N, C}, coords.options());
  std::vector<at::Tensor> grad_planes;
  for (const auto& p : planes) grad_planes.push_back(at::empty(p.sizes(), coords.options()));
  AT_DISPATCH_FLOATING_TYPES(coords.scalar_type(), "hexplane_backward_cpu", [&] {
    const Planes<scalar_t> P(planes);
    std::unique_ptr<Tap<scalar_t>[]> taps(new Tap<scalar_t>[K * N]);
    SampleGradKernel<scalar_t>(P, coords.data_ptr<scalar_t>(), N, D, axes.data(), grad_out.data_ptr<scalar_t>(),
                               taps.get(), a.data_ptr<scalar_t>(), grad_coords.data_ptr<scalar_t>());
    std::vector<scalar_t*> gp;
    for (auto& g : grad_planes) gp.push_back(g.data_ptr<scalar_t>());
    PlaneGradKernel<scalar_t>(P, N, taps.get(), a.data_ptr<scalar_t>(), gp);
  });
  return {grad_planes, grad_coords};
}

at::Tensor HexPlaneForward(const std::vector<at::Tensor>& planes, const at::Tensor& coords,
                           const std::vector<int64_t>& axes) {
  CheckInputs(planes, coords, axes);
  return HexPlaneForwardCpu(planes, coords, axes);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> HexPlaneBackward(const std::vector<at::Tensor>& planes,
                                                                 const at::Tensor& coords,
                                                                 const std::vector<int64_t>& axes,
                                                                 const at::Tensor& grad_out) {
  CheckInputs(planes, coords, axes);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({coords.size(0), planes[0].size(0)}) &&
                  grad_out.scalar_type() == coords.scalar_type(),
              "hexplane: grad_out must be [N, C] of coords' dtype");
  return HexPlaneBackwardCpu(planes, coords, axes, grad_out);
}
