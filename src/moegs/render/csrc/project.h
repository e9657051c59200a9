// Fused projection and colour of 3D Gaussians (EWA splatting + SH), forward and backward.
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU implementation in
// project_cpu.cpp. The autograd Function lives in Python (moegs/render/_project_cpu.py);
// the pure-PyTorch reference with the same semantics is moegs/render/projection.py
// (project_and_color with backend="torch").
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

// Forward projection and colour on the CPU.
//
// Args:
//   means:      [N, 3] float32/float64 world centres.
//   quats:      [N, 4] same dtype, (w, x, y, z) rotations of any norm (normalised here).
//   log_scales: [N, 3] same dtype, log standard deviations along the local axes.
//   coeffs, coeffs_rest: [N, K0, 3] and [N, K1, 3] same dtype: the SH coefficients (3DGS basis) in two
//               parts along the band axis, K = K0 + K1 (as experts store them, 3DGS's sh0 and shN, so
//               that no [N, K, 3] concatenation is made; K1 may be 0), or [0] (empty) when sh_degree < 0.
//   viewmat:    [4, 4] same dtype, world-to-camera (OpenCV convention).
//   center:     [3] same dtype, camera centre in world coordinates (origin of the view directions).
//   fx, fy, cx, cy: intrinsics in pixels; width, height: image size; near, far: depth range.
//   sh_degree:  0..3 with (sh_degree + 1)^2 <= K0 + K1, or -1: no colour is computed.
//
// Returns:
//   means2d: [N, 2] pixel coordinates of the centres.
//   conics:  [N, 3] upper triangle (a, b, c) of the inverse 2D covariance (+0.3 px blur).
//   depths:  [N]    camera-space z.
//   radii:   [N]    int32 3-sigma pixel radius, 0 for culled Gaussians.
//   rgb:     [N, 3] max(SH(dir) + 0.5, 0) for dir = normalise(mean - center); [0, 3] when sh_degree < 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectForwardCpu(
    const at::Tensor& means,
    const at::Tensor& quats,
    const at::Tensor& log_scales,
    const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest,
    const at::Tensor& viewmat,
    const at::Tensor& center,
    double fx, double fy, double cx, double cy,
    int64_t width, int64_t height,
    double near, double far,
    int64_t sh_degree);

// Backward of ProjectForwardCpu (recomputes the per-Gaussian intermediates).
//
// Args:
//   means, quats, log_scales, coeffs, viewmat, center, intrinsics, sizes, near, far, sh_degree:
//     as for the forward.
//   grad_means2d: [N, 2], grad_conics: [N, 3], grad_depths: [N], grad_rgb: [N, 3] (or [0, 3]
//     when sh_degree < 0): dL/d outputs, same dtype.
//
// Returns:
//   grad_means [N, 3] (including the view-direction term of the colour), grad_quats [N, 4],
//   grad_log_scales [N, 3], grad_coeffs [N, K0, 3] and grad_coeffs_rest [N, K1, 3] (zero beyond the
//   coefficients sh_degree uses; [0] when sh_degree < 0). Every Gaussian is independent, so results do not depend on the
//   thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectBackwardCpu(
    const at::Tensor& means,
    const at::Tensor& quats,
    const at::Tensor& log_scales,
    const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest,
    const at::Tensor& viewmat,
    const at::Tensor& center,
    double fx, double fy, double cx, double cy,
    int64_t width, int64_t height,
    double near, double far,
    int64_t sh_degree,
    const at::Tensor& grad_means2d,
    const at::Tensor& grad_conics,
    const at::Tensor& grad_depths,
    const at::Tensor& grad_rgb);

// Checked entry points bound to Python (validate, then call the *Cpu functions above).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectForward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest, const at::Tensor& viewmat, const at::Tensor& center, double fx, double fy, double cx, double cy,
    int64_t width, int64_t height, double near, double far, int64_t sh_degree);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectBackward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest, const at::Tensor& viewmat, const at::Tensor& center, double fx, double fy, double cx, double cy,
    int64_t width, int64_t height, double near, double far, int64_t sh_degree,
    const at::Tensor& grad_means2d, const at::Tensor& grad_conics, const at::Tensor& grad_depths,
    const at::Tensor& grad_rgb);

// Tile binning (bin_cpu.cpp): the visible Gaussians (radii > 0), front to back by depths (stable:
// ties in index order; radii and depths [N] of means2d's dtype), are put in the tiles of tile_size
// pixels their square of half-side radii overlaps.
// Returns offsets [tiles_y * tiles_x + 1] int64, flatten_ids [M] int64 (grouped by tile, front to
// back within a tile) and tile_ids [M] int64: exactly projection.bin_gaussians's lists.
std::tuple<at::Tensor, at::Tensor, at::Tensor> BinGaussiansCpu(const at::Tensor& means2d, const at::Tensor& radii,
                                                               const at::Tensor& depths, int64_t width, int64_t height,
                                                               int64_t tile_size);
