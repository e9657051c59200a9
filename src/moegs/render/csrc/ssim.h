// Fused SSIM and L1 of two images (Gaussian-window statistics, means over pixels and channels), forward and
// backward: the photometric loss (1 - l) L1 + l (1 - SSIM) in one op each way.
//
// Dispatcher: checks devices, dtypes and shapes, then calls the CPU implementation in
// ssim_cpu.cpp. The autograd Function lives in Python (moegs/eval/_ssim_cpu.py); the
// pure-PyTorch reference with the same semantics is moegs/eval/metrics.py (ssim with
// backend="torch": depthwise conv2d with the outer product of taps, zero padding K / 2).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

// Forward SSIM and L1 on the CPU.
//
// Args:
//   img:       [B, H, W, C] float32/float64 image.
//   ref:       [B, H, W, C] same dtype, the reference image.
//   taps:      [K] same dtype, K odd: the 1D window (the 2D window is taps taps^T); taps falling
//              outside the image are dropped (zero padding), with no renormalisation.
//   c1, c2:    the SSIM stabilising constants.
//   need_grad: also return the per-pixel derivatives the backward needs.
//
// Returns, with mu = G*x, E[x^2] = G*(x x), E[xy] = G*(x y) the windowed moments per channel and
// S = (2 mu_x mu_y + c1)(2 s_xy + c2) / ((mu_x^2 + mu_y^2 + c1)(s_xx + s_yy + c2)) the SSIM map:
//   ssim:    []           mean of S over B, H, W, C.
//   l1:      []           mean of |img - ref| over B, H, W, C.
//   d_mu:    [B, H, W, C] dS/d mu_x     (E[x^2], E[xy], mu_y, E[y^2] held fixed); [0] without need_grad.
//   d_ex2:   [B, H, W, C] dS/d E[x^2];  [0] without need_grad.
//   d_exy:   [B, H, W, C] dS/d E[xy];   [0] without need_grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> SsimForwardCpu(
    const at::Tensor& img,
    const at::Tensor& ref,
    const at::Tensor& taps,
    double c1,
    double c2,
    bool need_grad);

// Backward of SsimForwardCpu w.r.t. img (both outputs).
//
// Args:
//   img, ref, taps: as for the forward.
//   d_mu, d_ex2, d_exy: [B, H, W, C] the forward's per-pixel derivatives.
//   scale:     dL/d ssim divided by B H W C (dL/dS of every pixel).
//   l1_scale:  dL/d l1 divided by B H W C.
//
// Returns:
//   grad_img: [B, H, W, C] scale (G^T d_mu + 2 x G^T d_ex2 + y G^T d_exy) + l1_scale sgn(img - ref)
//   (sgn 0 at 0, as torch's L1 backward); G is symmetric, so G^T is
//   the same separable filter. Every output pixel is written by one thread: no atomics, results
//   independent of the thread count.
at::Tensor SsimBackwardCpu(
    const at::Tensor& img,
    const at::Tensor& ref,
    const at::Tensor& taps,
    const at::Tensor& d_mu,
    const at::Tensor& d_ex2,
    const at::Tensor& d_exy,
    double scale,
    double l1_scale);

// Checked entry points bound to Python (validate, then call the *Cpu functions above).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> SsimForward(
    const at::Tensor& img, const at::Tensor& ref, const at::Tensor& taps, double c1, double c2, bool need_grad);

at::Tensor SsimBackward(const at::Tensor& img, const at::Tensor& ref, const at::Tensor& taps, const at::Tensor& d_mu,
                        const at::Tensor& d_ex2, const at::Tensor& d_exy, double scale, double l1_scale);
