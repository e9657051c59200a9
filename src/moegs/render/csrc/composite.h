// Tile-based alpha compositing of screen-space Gaussians (3DGS semantics).
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU
// implementation in composite_cpu.cpp. The autograd Function lives in Python
// (moegs/render/_cpu.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>

#include <tuple>

// Forward compositing on the CPU.
//
// Args:
//   means2d:     [N, 2] float32/float64 pixel coordinates of the centres.
//   conics:      [N, 3] same dtype, upper triangle (a, b, c) of the inverse 2D covariance.
//   opacities:   [N]    same dtype, in (0, 1).
//   features:    [N, D] same dtype, D >= 1 channels composited with the same weights.
//   expert_ids:  [N] int32 expert of each Gaussian in [0, E), or [0] (empty): all in expert 0.
//   num_experts: E >= 1, the number of images composited at once (one per expert).
//   offsets:     [tiles_y * tiles_x + 1] int64, tile k owns flatten_ids[offsets[k]:offsets[k+1]].
//   flatten_ids: [M] int64 Gaussian indices, front to back within each tile.
//   width, height: image size; tiles_x, tiles_y, tile_size: the tile grid.
//
// Returns (expert e's image composites its own Gaussians only, T_i being its own transmittance):
//   features_img: [E, H, W, D] sum_i w_i f_i with w_i = alpha_i T_i.
//   alpha_img:    [E, H, W]    sum_i w_i.
//   final_T:      [E, H, W]    transmittance after the last contributing Gaussian.
//   last:         [E, H, W]    int32, 1 + position (in its tile's list) of the last contributing Gaussian, 0 if none.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeForwardCpu(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& features,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size);

// The compositing weights as a sparse matrix: features_img = Wt @ features for any features.
//
// Args: as for the forward (no features).
// Returns CSR arrays of the [E * H * W, N] matrix whose row e * H * W + y * W + x holds the
// weights w_i = alpha_i T_i of pixel (x, y) of expert e (zero weights are left out), then of its
// [N, E * H * W] transpose:
//   crow: [E * H * W + 1] int32 row pointers; col: [nnz] int32 Gaussian indices, front to back
//   within a row; val: [nnz] the weights (dtype of the inputs);
//   tcrow: [N + 1] int32; tcol: [nnz] int32 image rows, ascending; tval: [nnz].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeWeightsCpu(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size);

// Backward of CompositeForwardCpu (back-to-front traversal from the stored
// final transmittance and last contributing index of every pixel).
//
// Args:
//   means2d, conics, opacities, features, expert_ids, num_experts, offsets, flatten_ids,
//   width, height, tiles_x, tiles_y, tile_size: as for the forward.
//   final_T:    [E, H, W] from the forward; last: [E, H, W] int32 from the forward.
//   grad_features_img: [E, H, W, D] dL/d features_img.
//   grad_alpha_img:    [E, H, W]    dL/d alpha_img.
//
// Returns:
//   grad_means2d [N, 2], grad_conics [N, 3], grad_opacities [N], grad_features [N, D]
//   (dtype of the inputs; accumulation order is fixed, so results do not depend on the thread count).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeBackwardCpu(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& features,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    const at::Tensor& final_T,
    const at::Tensor& last,
    const at::Tensor& grad_features_img,
    const at::Tensor& grad_alpha_img,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size);

namespace moegs_detail {

inline void CheckGaussians(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& features,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size) {
  const int64_t N = means2d.size(0);
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "means2d must be [N, 2]");
  TORCH_CHECK(conics.dim() == 2 && conics.size(0) == N && conics.size(1) == 3, "conics must be [N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == N, "opacities must be [N]");
  TORCH_CHECK(features.dim() == 2 && features.size(0) == N && features.size(1) >= 1, "features must be [N, D], D >= 1");
  const auto dt = means2d.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "composite: float32 or float64 inputs only");
  for (const at::Tensor* t : {&means2d, &conics, &opacities, &features}) {
    TORCH_CHECK(t->device().is_cpu(), "composite: CPU tensors only");
    TORCH_CHECK(t->scalar_type() == dt, "composite: all Gaussian tensors must share one dtype");
    TORCH_CHECK(t->is_contiguous(), "composite: inputs must be contiguous");
  }
  TORCH_CHECK(width >= 1 && height >= 1 && tile_size >= 1, "composite: bad image or tile size");
  TORCH_CHECK(tiles_x * tile_size >= width && tiles_y * tile_size >= height, "composite: tile grid smaller than the image");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.is_contiguous() && offsets.dim() == 1 &&
                  offsets.size(0) == tiles_x * tiles_y + 1,
              "offsets must be contiguous int64 [tiles_y * tiles_x + 1]");
  TORCH_CHECK(flatten_ids.scalar_type() == at::kLong && flatten_ids.is_contiguous() && flatten_ids.dim() == 1,
              "flatten_ids must be contiguous int64 [M]");
  TORCH_CHECK(num_experts >= 1, "composite: num_experts must be >= 1");
  TORCH_CHECK(expert_ids.scalar_type() == at::kInt && expert_ids.is_contiguous() && expert_ids.dim() == 1 &&
                  expert_ids.device().is_cpu() && (expert_ids.size(0) == N || expert_ids.size(0) == 0),
              "expert_ids must be contiguous int32 [N] (or [0])");
  if (expert_ids.size(0)) {
    const int32_t* e = expert_ids.data_ptr<int32_t>();
    for (int64_t i = 0; i < N; ++i) {
      TORCH_CHECK(e[i] >= 0 && e[i] < num_experts, "expert_ids must lie in [0, num_experts)");
    }
  } else {
    TORCH_CHECK(num_experts == 1, "expert_ids are required when num_experts > 1");
  }
}

}  // namespace moegs_detail

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeForward(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& features,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size) {
  moegs_detail::CheckGaussians(
      means2d, conics, opacities, features, expert_ids, num_experts, offsets, flatten_ids, width, height, tiles_x,
      tiles_y, tile_size);
  return CompositeForwardCpu(
      means2d, conics, opacities, features, expert_ids, num_experts, offsets, flatten_ids, width, height, tiles_x,
      tiles_y, tile_size);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeWeights(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size) {
  const auto ones = at::ones({means2d.size(0), 1}, means2d.options());
  moegs_detail::CheckGaussians(
      means2d, conics, opacities, ones, expert_ids, num_experts, offsets, flatten_ids, width, height, tiles_x,
      tiles_y, tile_size);
  return CompositeWeightsCpu(
      means2d, conics, opacities, expert_ids, num_experts, offsets, flatten_ids, width, height, tiles_x, tiles_y,
      tile_size);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> CompositeBackward(
    const at::Tensor& means2d,
    const at::Tensor& conics,
    const at::Tensor& opacities,
    const at::Tensor& features,
    const at::Tensor& expert_ids,
    int64_t num_experts,
    const at::Tensor& offsets,
    const at::Tensor& flatten_ids,
    const at::Tensor& final_T,
    const at::Tensor& last,
    const at::Tensor& grad_features_img,
    const at::Tensor& grad_alpha_img,
    int64_t width,
    int64_t height,
    int64_t tiles_x,
    int64_t tiles_y,
    int64_t tile_size) {
  moegs_detail::CheckGaussians(
      means2d, conics, opacities, features, expert_ids, num_experts, offsets, flatten_ids, width, height, tiles_x,
      tiles_y, tile_size);
  const int64_t D = features.size(1), E = num_experts;
  TORCH_CHECK(final_T.scalar_type() == means2d.scalar_type() && final_T.is_contiguous() &&
                  final_T.sizes() == at::IntArrayRef({E, height, width}),
              "final_T must be contiguous [E, H, W] of the inputs' dtype");
  TORCH_CHECK(last.scalar_type() == at::kInt && last.is_contiguous() &&
                  last.sizes() == at::IntArrayRef({E, height, width}),
              "last must be contiguous int32 [E, H, W]");
  TORCH_CHECK(grad_features_img.scalar_type() == means2d.scalar_type() && grad_features_img.is_contiguous() &&
                  grad_features_img.sizes() == at::IntArrayRef({E, height, width, D}),
              "grad_features_img must be contiguous [E, H, W, D] of the inputs' dtype");
  TORCH_CHECK(grad_alpha_img.scalar_type() == means2d.scalar_type() && grad_alpha_img.is_contiguous() &&
                  grad_alpha_img.sizes() == at::IntArrayRef({E, height, width}),
              "grad_alpha_img must be contiguous [E, H, W] of the inputs' dtype");
  return CompositeBackwardCpu(means2d, conics, opacities, features, expert_ids, num_experts, offsets, flatten_ids,
                              final_T, last,
                              grad_features_img, grad_alpha_img, width, height, tiles_x, tiles_y, tile_size);
}
