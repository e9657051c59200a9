// Tile binning on the CPU: the per-tile, front-to-back Gaussian lists of projection.bin_gaussians.
//
// The Gaussians arrive sorted front to back; each one's tile rectangle is computed with the same
// floating-point operations as the PyTorch version, the lists are built by a counting sort on the
// tile (so each tile keeps the depth order), serially, and the result equals the reference exactly.

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "project.h"

namespace {

template <typename scalar_t>
void TileRect(const scalar_t* m, scalar_t r, int64_t ts, int64_t tx, int64_t ty, int64_t* rect) {
  const scalar_t s = static_cast<scalar_t>(ts);
  auto clampi = [](scalar_t v, int64_t hi) {
    return static_cast<int64_t>(std::min(std::max(v, scalar_t(0)), static_cast<scalar_t>(hi)));
  };
  rect[0] = clampi(std::floor((m[0] - r) / s), tx);
  rect[1] = clampi(std::ceil((m[0] + r) / s), tx);
  rect[2] = clampi(std::floor((m[1] - r) / s), ty);
  rect[3] = clampi(std::ceil((m[1] + r) / s), ty);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> BinGaussiansCpu(const at::Tensor& means2d, const at::Tensor& radii,
                                                               const at::Tensor& order, int64_t width, int64_t height,
                                                               int64_t tile_size) {
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2 && means2d.is_contiguous(), "means2d must be contiguous [N, 2]");
  TORCH_CHECK(radii.scalar_type() == means2d.scalar_type() && radii.is_contiguous() && radii.numel() == means2d.size(0),
              "radii must be contiguous [N] of means2d's dtype");
  TORCH_CHECK(order.scalar_type() == at::kLong && order.dim() == 1 && order.is_contiguous(),
              "order must be contiguous int64 [V]");
  TORCH_CHECK(tile_size > 0 && width >= 0 && height >= 0, "bad image or tile size");
  const int64_t tx = (width + tile_size - 1) / tile_size, ty = (height + tile_size - 1) / tile_size;
  const int64_t V = order.size(0), T = tx * ty;
  const int64_t* ord = order.data_ptr<int64_t>();
  auto offsets = at::zeros({T + 1}, order.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  std::vector<int64_t> rects(static_cast<size_t>(V) * 4);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "bin_gaussians_cpu", [&] {
    const scalar_t* m = means2d.data_ptr<scalar_t>();
    const scalar_t* r = radii.data_ptr<scalar_t>();
    for (int64_t k = 0; k < V; ++k) {
      const int64_t g = ord[k];
      TORCH_CHECK(g >= 0 && g < means2d.size(0), "order holds an index out of range");
      TileRect<scalar_t>(m + 2 * g, r[g], tile_size, tx, ty, rects.data() + 4 * k);
    }
  });
  for (int64_t k = 0; k < V; ++k) {
    const int64_t* b = rects.data() + 4 * k;
    for (int64_t y = b[2]; y < b[3]; ++y) {
      for (int64_t x = b[0]; x < b[1]; ++x) {
        ++off[y * tx + x + 1];
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    off[t + 1] += off[t];
  }
  auto flatten_ids = at::empty({off[T]}, order.options());
  auto tile_ids = at::empty({off[T]}, order.options());
  int64_t* ids = flatten_ids.data_ptr<int64_t>();
  int64_t* tiles = tile_ids.data_ptr<int64_t>();
  std::vector<int64_t> cursor(off, off + T);
  for (int64_t k = 0; k < V; ++k) {
    const int64_t* b = rects.data() + 4 * k;
    for (int64_t y = b[2]; y < b[3]; ++y) {
      for (int64_t x = b[0]; x < b[1]; ++x) {
        const int64_t t = y * tx + x, at_ = cursor[t]++;
        ids[at_] = ord[k];
        tiles[at_] = t;
      }
    }
  }
  return {offsets, flatten_ids, tile_ids};
}
