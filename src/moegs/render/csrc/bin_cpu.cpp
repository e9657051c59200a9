// Tile binning on the CPU: the per-tile, front-to-back Gaussian lists of projection.bin_gaussians.
//
// The visible Gaussians (radius > 0) are ordered front to back by a stable LSD radix sort of their
// depths' bits (the order of torch.argsort(depths, stable=True): ties in index order), each one's
// tile rectangle is computed with the same floating-point operations as the PyTorch version, the
// lists are built by a counting sort on the tile (so each tile keeps the depth order), serially,
// and the result equals the reference exactly.

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
#include <cstring>
#include <type_traits>
#include <vector>

#include "project.h"

namespace {

// Unsigned key whose order is the order of the floating-point value: flip every bit of a negative
// number, the sign bit of a positive one; -0 counts as +0 and every NaN as the largest value (as
// torch.sort, which puts NaNs last).
template <typename scalar_t, typename key_t>
key_t OrderedKey(scalar_t v) {
  constexpr int kBits = 8 * sizeof(key_t);
  constexpr key_t kSign = key_t(1) << (kBits - 1);
  if (std::isnan(v)) {
    return ~key_t(0);
  }
  v += scalar_t(0);  // -0 -> +0
  key_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & kSign) ? static_cast<key_t>(~u) : static_cast<key_t>(u | kSign);
}

// Indices i with radii[i] > 0, stably sorted by depths[i] (byte-wise LSD radix sort).
template <typename scalar_t, typename key_t>
std::vector<int64_t> DepthOrder(const scalar_t* radii, const scalar_t* depths, int64_t n) {
  std::vector<int64_t> idx, tmp_idx;
  std::vector<key_t> key, tmp_key;
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] > 0) {
      idx.push_back(i);
      key.push_back(OrderedKey<scalar_t, key_t>(depths[i]));
    }
  }
  const size_t V = idx.size();
  tmp_idx.resize(V);
  tmp_key.resize(V);
  for (size_t shift = 0; shift < 8 * sizeof(key_t); shift += 8) {
    size_t count[257] = {0};
    for (size_t k = 0; k < V; ++k) {
      ++count[((key[k] >> shift) & 0xff) + 1];
    }
    if (count[((key.empty() ? 0 : key[0]) >> shift & 0xff) + 1] == V) {
      continue;  // every key has this byte: the pass would not move anything
    }
    for (int b = 0; b < 256; ++b) {
      count[b + 1] += count[b];
    }
    for (size_t k = 0; k < V; ++k) {
      const size_t at_ = count[(key[k] >> shift) & 0xff]++;
      tmp_idx[at_] = idx[k];
      tmp_key[at_] = key[k];
    }
    idx.swap(tmp_idx);
    key.swap(tmp_key);
  }
  return idx;
}

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
                                                               const at::Tensor& depths, int64_t width, int64_t height,
                                                               int64_t tile_size) {
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2 && means2d.is_contiguous(), "means2d must be contiguous [N, 2]");
  TORCH_CHECK(radii.scalar_type() == means2d.scalar_type() && radii.is_contiguous() && radii.numel() == means2d.size(0),
              "radii must be contiguous [N] of means2d's dtype");
  TORCH_CHECK(depths.scalar_type() == means2d.scalar_type() && depths.is_contiguous() &&
              depths.numel() == means2d.size(0), "depths must be contiguous [N] of means2d's dtype");
  TORCH_CHECK(tile_size > 0 && width >= 0 && height >= 0, "bad image or tile size");
  const int64_t tx = (width + tile_size - 1) / tile_size, ty = (height + tile_size - 1) / tile_size;
  const int64_t T = tx * ty;
  std::vector<int64_t> ord;
  std::vector<int64_t> rects;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "bin_gaussians_cpu", [&] {
    using key_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
    const scalar_t* m = means2d.data_ptr<scalar_t>();
    const scalar_t* r = radii.data_ptr<scalar_t>();
    ord = DepthOrder<scalar_t, key_t>(r, depths.data_ptr<scalar_t>(), means2d.size(0));
    rects.resize(ord.size() * 4);
    for (size_t k = 0; k < ord.size(); ++k) {
      TileRect<scalar_t>(m + 2 * ord[k], r[ord[k]], tile_size, tx, ty, rects.data() + 4 * k);
    }
  });
  const int64_t V = static_cast<int64_t>(ord.size());
  auto offsets = at::zeros({T + 1}, means2d.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
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
  auto flatten_ids = at::empty({off[T]}, offsets.options());
  auto tile_ids = at::empty({off[T]}, offsets.options());
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
