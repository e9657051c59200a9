// Fused sampling of a set of 2D feature planes (one HexPlane / K-planes level), forward and backward.
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU implementation in
// hexplane_cpu.cpp. The autograd Function lives in Python (moegs/experts/_hexplane_cpu.py);
// the pure-PyTorch reference with the same semantics is moegs/experts/hexplane.py
// (sample_planes_torch: F.grid_sample per plane, bilinear, border padding, align_corners=True).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

// Product over the planes of their bilinear samples, on the CPU.
//
// Args:
//   planes: K tensors [C, H_k, W_k], one float32/float64 dtype, any K >= 1 and sizes >= 1.
//   coords: [N, D] same dtype, normalised coordinates (-1 and 1 are the first and last cell centres;
//           values outside are clamped to the border).
//   axes:   2K ints in [0, D): plane k reads coords[:, axes[2k]] along W_k and coords[:, axes[2k + 1]] along H_k.
//
// Returns:
//   [N, C]: out[n, c] = prod_k bilinear(planes[k][c], coords[n, axes[2k]], coords[n, axes[2k + 1]]).
at::Tensor HexPlaneForwardCpu(const std::vector<at::Tensor>& planes, const at::Tensor& coords,
                              const std::vector<int64_t>& axes);

// Backward of HexPlaneForwardCpu.
//
// Args:
//   planes, coords, axes: as for the forward.
//   grad_out: [N, C] same dtype, dL/d out.
//
// Returns:
//   grad_planes: K tensors [C, H_k, W_k]; grad_coords: [N, D] (zero along clamped coordinates and along
//   columns no plane reads). Every plane cell sums its contributions in Gaussian order on one thread, so
//   results do not depend on the thread count.
std::tuple<std::vector<at::Tensor>, at::Tensor> HexPlaneBackwardCpu(const std::vector<at::Tensor>& planes,
                                                                    const at::Tensor& coords,
                                                                    const std::vector<int64_t>& axes,
                                                                    const at::Tensor& grad_out);

// Checked entry points bound to Python (validate, then call the *Cpu functions above).
at::Tensor HexPlaneForward(const std::vector<at::Tensor>& planes, const at::Tensor& coords,
                           const std::vector<int64_t>& axes);

std::tuple<std::vector<at::Tensor>, at::Tensor> HexPlaneBackward(const std::vector<at::Tensor>& planes,
                                                                 const at::Tensor& coords,
                                                                 const std::vector<int64_t>& axes,
                                                                 const at::Tensor& grad_out);
