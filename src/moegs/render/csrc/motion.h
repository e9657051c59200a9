// Fused per-Gaussian motion of the experts at one time, forward and backward.
//
// A deformation of N Gaussians written as torch element-wise ops is a few dozen ops forward and
// as many backward, each one pass over [N, 3] or [N, 4] and (above torch's grain size) one
// parallel region: most of a step's time outside the rasterizer when threads wait passively.
// These ops do it in one pass each way.
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU implementation in
// motion_cpu.cpp. The autograd Functions live in Python (moegs/experts/_motion_cpu.py); the
// pure-PyTorch references with the same semantics are the experts' own code
// (KeyframeGaussians.gaussians_at in moegs/experts/keyframe.py, SpacetimeGaussians.gaussians_at in
// moegs/experts/spacetime.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

// Bound to Python; each validates its inputs (devices, dtypes, shapes, columns), then runs on the CPU.

// Ex4DGS keyframe motion at time t.
//
// Args:
//   means, velocity: [N, 3]; quats: [N, 4]; kf_means: [N, K, 3]; kf_quats: [N, K, 4]; dynamic: [N]
//                    (> 0.5: dynamic), one float32/float64 dtype.
//   t:               the time (static Gaussians move to means + velocity t).
//   pos_cols, pos_coefs: W keyframe columns (in [0, K)) and coefficients: a dynamic Gaussian's position
//                    is sum_w pos_coefs[w] kf_means[:, pos_cols[w]] (the Catmull-Rom Hermite spline at t
//                    is linear in the keyframes; the caller computes its coefficients).
//   rot_cols:        the two keyframe columns whose rotations are slerped.
//   s:               the slerp parameter in [0, 1].
//
// Returns:
//   means_t [N, 3], quats_t [N, 4]: dynamic rows the spline and slerp(normalize(q0), normalize(q1), s)
//   (shorter arc; normalised lerp where sin(theta) < 1e-4; |cos theta| clamped to 1 - 1e-7), static
//   rows means + velocity t and normalize(quats).
std::tuple<at::Tensor, at::Tensor> KeyframeMotionForward(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s);

// Backward of KeyframeMotionForward: the forward's arguments, then dL/d means_t [N, 3] and dL/d quats_t [N, 4].
//
// Returns:
//   grad_means [N, 3], grad_velocity [N, 3], grad_quats [N, 4] (zero on dynamic rows),
//   grad_kf_means [N, K, 3], grad_kf_quats [N, K, 4] (zero on static rows and outside the columns read).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> KeyframeMotionBackward(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t);

// Spacetime Gaussians' motion at time t (tau = t - t_center).
//
// Args:
//   means: [N, 3]; motion: [N, 9] ([a | b | c]); quats, omega: [N, 4]; opacities, t_center, t_scale: [N];
//          one float32/float64 dtype.
//
// Returns:
//   means_t [N, 3] = means + a tau + b tau^2 + c tau^3, quats_t [N, 4] = quats + omega tau (tau held
//   constant in both: the temporal centre learns through the opacity only), and opacity_t [N], the logit
//   of sigmoid(opacities) exp(-(tau exp(-t_scale))^2) computed in log space with the log-opacity
//   clamped to log1p(-1e-6).
std::tuple<at::Tensor, at::Tensor, at::Tensor> SpacetimeMotionForward(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t);

// Backward of SpacetimeMotionForward: the forward's arguments, then dL/d means_t, quats_t and opacity_t.
//
// Returns:
//   grad_means [N, 3], grad_motion [N, 9], grad_quats [N, 4], grad_omega [N, 4], grad_opacities [N],
//   grad_t_center [N], grad_t_scale [N].
std::vector<at::Tensor> SpacetimeMotionBackward(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t, const at::Tensor& grad_opacity_t);
