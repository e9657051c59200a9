// Fused per-Gaussian motion of the keyframe (Ex4DGS) and spacetime (STG) experts, forward and backward.
//
// One OpenMP pass over the Gaussians each way (at::get_num_threads() threads); every output row is
// written by one thread, so results do not depend on the thread count. The formulas follow the
// torch references op for op (see motion.h), their derivatives written out below.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "motion.h"

namespace {

// F.normalize's epsilon, slerp's small-angle threshold and clamp (moegs/experts/keyframe.py).
constexpr double kNormEps = 1e-12;
constexpr double kSlerpEps = 1e-4;
constexpr double kMaxCos = 1.0 - 1e-7;
// The spacetime log-opacity clamp, log1p(-1e-6) (moegs/experts/spacetime.py).
const double kMaxLogOpacity = std::log1p(-1e-6);

template <typename T>
inline T Dot4(const T* a, const T* b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
}

// out = q / max(|q|, eps); returns |q|.
template <typename T>
inline T Normalize4(const T* q, T* out) {
  const T n = std::sqrt(Dot4(q, q));
  const T d = std::max(n, static_cast<T>(kNormEps));
  for (int j = 0; j < 4; ++j) out[j] = q[j] / d;
  return n;
}

// d/dq of q / max(|q|, eps) applied to g: (g - u (u . g)) / |q| (u the unit output), g / eps below eps.
template <typename T>
inline void NormalizeBackward4(const T* u, T n, const T* g, T* out) {
  if (n <= static_cast<T>(kNormEps)) {
    for (int j = 0; j < 4; ++j) out[j] = g[j] / static_cast<T>(kNormEps);
    return;
  }
  const T ug = Dot4(u, g);
  for (int j = 0; j < 4; ++j) out[j] = (g[j] - u[j] * ug) / n;
}

// What a slerp's forward leaves for its backward.
template <typename T>
struct Slerp {
  T a[4], bp[4];  // normalised ends (bp: before the shorter-arc flip)
  T na, nb;       // their norms before normalising
  T sigma;        // -1 where the arc was flipped
  T dot;          // a . bp
  T d;            // min(|dot|, kMaxCos)
  bool clamped, small;
  T theta, sn;  // theta = acos(d); sn = sin(theta) = sqrt(1 - d^2)
  T ss, cs;     // sin(s theta), cos(s theta)
  T w0, w1;
  T r[4], nr, out[4];
};

template <typename T>
inline void SlerpForward(const T* q0, const T* q1, T s, Slerp<T>& S) {
  S.na = Normalize4(q0, S.a);
  S.nb = Normalize4(q1, S.bp);
  S.dot = Dot4(S.a, S.bp);
  S.sigma = S.dot < 0 ? T(-1) : T(1);
  const T ad = std::abs(S.dot);
  S.clamped = ad > static_cast<T>(kMaxCos);
  S.d = S.clamped ? static_cast<T>(kMaxCos) : ad;
  // One acos and one sine-cosine pair per slerp: sin(theta) from cos(theta) = d, and the weights'
  // sin((1 - s) theta) = sin(theta) cos(s theta) - cos(theta) sin(s theta).
  S.theta = std::acos(S.d);
  S.sn = std::sqrt(1 - S.d * S.d);
  S.small = S.sn < static_cast<T>(kSlerpEps);
  if (S.small) {
    S.w0 = 1 - s, S.w1 = s;
  } else {
    S.ss = std::sin(s * S.theta), S.cs = std::cos(s * S.theta);
    S.w0 = S.cs - S.d * S.ss / S.sn, S.w1 = S.ss / S.sn;
  }
  for (int j = 0; j < 4; ++j) S.r[j] = S.w0 * S.a[j] + S.w1 * S.sigma * S.bp[j];
  S.nr = Normalize4(S.r, S.out);
}

// Gradients g0, g1 of the raw ends q0, q1 from g (d L / d out).
template <typename T>
inline void SlerpBackward(const Slerp<T>& S, T s, const T* g, T* g0, T* g1) {
  T gr[4], ga[4], gbp[4];
  NormalizeBackward4(S.out, S.nr, g, gr);
  for (int j = 0; j < 4; ++j) ga[j] = S.w0 * gr[j], gbp[j] = S.sigma * S.w1 * gr[j];
  if (!S.small) {
    T b[4];
    for (int j = 0; j < 4; ++j) b[j] = S.sigma * S.bp[j];
    const T gw0 = Dot4(S.a, gr), gw1 = Dot4(b, gr);
    // cos(theta) = d; sin and cos of (1 - s) theta from those of theta and s theta.
    const T sn2 = S.sn * S.sn;
    const T s1 = S.sn * S.cs - S.d * S.ss, c1 = S.d * S.cs + S.sn * S.ss;
    const T dw0 = ((1 - s) * c1 * S.sn - s1 * S.d) / sn2;
    const T dw1 = (s * S.cs * S.sn - S.ss * S.d) / sn2;
    const T gtheta = gw0 * dw0 + gw1 * dw1;
    const T gd = S.clamped ? T(0) : -gtheta / S.sn;  // d acos(d) / dd = -1 / sqrt(1 - d^2)
    const T gdot = S.dot > 0 ? gd : (S.dot < 0 ? -gd : T(0));  // through |dot|
    for (int j = 0; j < 4; ++j) ga[j] += gdot * S.bp[j], gbp[j] += gdot * S.a[j];
  }
  NormalizeBackward4(S.a, S.na, ga, g0);
  NormalizeBackward4(S.bp, S.nb, gbp, g1);
}

template <typename T>
struct KeyframeArgs {
  const T *means, *velocity, *quats, *kf_means, *kf_quats, *dynamic;
  int64_t N, K;
  T t, s;
  std::vector<int64_t> pos_cols;
  std::vector<T> pos_coefs;
  int64_t r0, r1;
};

template <typename T>
KeyframeArgs<T> MakeKeyframeArgs(const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats,
                                 const at::Tensor& kf_means, const at::Tensor& kf_quats, const at::Tensor& dynamic,
                                 double t, const std::vector<int64_t>& pos_cols, const std::vector<double>& pos_coefs,
                                 const std::vector<int64_t>& rot_cols, double s) {
  KeyframeArgs<T> a;
  a.means = means.data_ptr<T>(), a.velocity = velocity.data_ptr<T>(), a.quats = quats.data_ptr<T>();
  a.kf_means = kf_means.data_ptr<T>(), a.kf_quats = kf_quats.data_ptr<T>(), a.dynamic = dynamic.data_ptr<T>();
  a.N = means.size(0), a.K = kf_means.size(1);
  a.t = static_cast<T>(t), a.s = static_cast<T>(s);
  a.pos_cols = pos_cols;
  for (double c : pos_coefs) a.pos_coefs.push_back(static_cast<T>(c));
  a.r0 = rot_cols[0], a.r1 = rot_cols[1];
  return a;
}

template <typename T>
void KeyframeForwardKernel(const KeyframeArgs<T>& A, T* means_t, T* quats_t) {
  const int64_t W = static_cast<int64_t>(A.pos_cols.size());
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t n = 0; n < A.N; ++n) {
    T* m = means_t + 3 * n;
    T* q = quats_t + 4 * n;
    if (A.dynamic[n] > T(0.5)) {
      const T* P = A.kf_means + n * A.K * 3;
      for (int d = 0; d < 3; ++d) m[d] = 0;
      for (int64_t w = 0; w < W; ++w)
        for (int d = 0; d < 3; ++d) m[d] += A.pos_coefs[w] * P[A.pos_cols[w] * 3 + d];
      const T* Q = A.kf_quats + n * A.K * 4;
      Slerp<T> S;
      SlerpForward(Q + A.r0 * 4, Q + A.r1 * 4, A.s, S);
      std::memcpy(q, S.out, 4 * sizeof(T));
    } else {
      for (int d = 0; d < 3; ++d) m[d] = A.means[3 * n + d] + A.velocity[3 * n + d] * A.t;
      Normalize4(A.quats + 4 * n, q);
    }
  }
}

// Whether any of the D upstream gradients at g is nonzero: a Gaussian none reach gets exact zeros.
template <typename T>
inline bool Reached(const T* g, int D) {
  bool any = false;
  for (int i = 0; i < D; ++i) any |= g[i] != T(0);
  return any;
}

template <typename T>
void KeyframeBackwardKernel(const KeyframeArgs<T>& A, const T* gm, const T* gq, T* g_means, T* g_velocity,
                            T* g_quats, T* g_kf_means, T* g_kf_quats) {
  const int64_t W = static_cast<int64_t>(A.pos_cols.size()), K = A.K;
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t n = 0; n < A.N; ++n) {
    T* gkm = g_kf_means + n * K * 3;
    T* gkq = g_kf_quats + n * K * 4;
    std::memset(gkm, 0, K * 3 * sizeof(T));
    std::memset(gkq, 0, K * 4 * sizeof(T));
    const T* g = gm + 3 * n;
    if (!Reached(g, 3) && !Reached(gq + 4 * n, 4)) {  // linear in the upstream: exact zeros
      std::fill(g_means + 3 * n, g_means + 3 * n + 3, T(0));
      std::fill(g_velocity + 3 * n, g_velocity + 3 * n + 3, T(0));
      std::fill(g_quats + 4 * n, g_quats + 4 * n + 4, T(0));
      continue;
    }
    if (A.dynamic[n] > T(0.5)) {
      for (int d = 0; d < 3; ++d) g_means[3 * n + d] = 0, g_velocity[3 * n + d] = 0;
      for (int j = 0; j < 4; ++j) g_quats[4 * n + j] = 0;
      for (int64_t w = 0; w < W; ++w)
        for (int d = 0; d < 3; ++d) gkm[A.pos_cols[w] * 3 + d] += A.pos_coefs[w] * g[d];
      const T* Q = A.kf_quats + n * K * 4;
      Slerp<T> S;
      SlerpForward(Q + A.r0 * 4, Q + A.r1 * 4, A.s, S);
      T g0[4], g1[4];
      SlerpBackward(S, A.s, gq + 4 * n, g0, g1);
      for (int j = 0; j < 4; ++j) gkq[A.r0 * 4 + j] += g0[j], gkq[A.r1 * 4 + j] += g1[j];
    } else {
      for (int d = 0; d < 3; ++d) g_means[3 * n + d] = g[d], g_velocity[3 * n + d] = g[d] * A.t;
      T u[4];
      const T nq = Normalize4(A.quats + 4 * n, u);
      NormalizeBackward4(u, nq, gq + 4 * n, g_quats + 4 * n);
    }
  }
}

// log(sigmoid(x)), stable for any x.
template <typename T>
inline T LogSigmoid(T x) {
  return std::min(x, T(0)) - std::log1p(std::exp(-std::abs(x)));
}

template <typename T>
struct SpacetimeArgs {
  const T *means, *motion, *quats, *omega, *opacities, *t_center, *t_scale;
  int64_t N;
  T t;
};

template <typename T>
SpacetimeArgs<T> MakeSpacetimeArgs(const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats,
                                   const at::Tensor& omega, const at::Tensor& opacities, const at::Tensor& t_center,
                                   const at::Tensor& t_scale, double t) {
  return {means.data_ptr<T>(), motion.data_ptr<T>(), quats.data_ptr<T>(), omega.data_ptr<T>(),
          opacities.data_ptr<T>(), t_center.data_ptr<T>(), t_scale.data_ptr<T>(), means.size(0), static_cast<T>(t)};
}

template <typename T>
void SpacetimeForwardKernel(const SpacetimeArgs<T>& A, T* means_t, T* quats_t, T* opacity_t) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t n = 0; n < A.N; ++n) {
    const T tau = A.t - A.t_center[n], tau2 = tau * tau, tau3 = tau2 * tau;
    const T* c = A.motion + 9 * n;
    for (int d = 0; d < 3; ++d) means_t[3 * n + d] = A.means[3 * n + d] + c[d] * tau + c[3 + d] * tau2 + c[6 + d] * tau3;
    for (int j = 0; j < 4; ++j) quats_t[4 * n + j] = A.quats[4 * n + j] + A.omega[4 * n + j] * tau;
    const T u = tau * std::exp(-A.t_scale[n]);
    const T log_p = std::min(LogSigmoid(A.opacities[n]) - u * u, static_cast<T>(kMaxLogOpacity));
    opacity_t[n] = log_p - std::log1p(-std::exp(log_p));
  }
}

template <typename T>
void SpacetimeBackwardKernel(const SpacetimeArgs<T>& A, const T* gm, const T* gq, const T* go, T* g_means,
                             T* g_motion, T* g_quats, T* g_omega, T* g_opacities, T* g_t_center, T* g_t_scale) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t n = 0; n < A.N; ++n) {
    if (!Reached(gm + 3 * n, 3) && !Reached(gq + 4 * n, 4) && go[n] == T(0)) {  // linear in the upstream
      std::fill(g_means + 3 * n, g_means + 3 * n + 3, T(0));
      std::fill(g_motion + 9 * n, g_motion + 9 * n + 9, T(0));
      std::fill(g_quats + 4 * n, g_quats + 4 * n + 4, T(0));
      std::fill(g_omega + 4 * n, g_omega + 4 * n + 4, T(0));
      g_opacities[n] = g_t_center[n] = g_t_scale[n] = T(0);
      continue;
    }
    const T tau = A.t - A.t_center[n], tau2 = tau * tau, tau3 = tau2 * tau;
    for (int d = 0; d < 3; ++d) {
      const T g = gm[3 * n + d];
      g_means[3 * n + d] = g;
      g_motion[9 * n + d] = g * tau, g_motion[9 * n + 3 + d] = g * tau2, g_motion[9 * n + 6 + d] = g * tau3;
    }
    for (int j = 0; j < 4; ++j) g_quats[4 * n + j] = gq[4 * n + j], g_omega[4 * n + j] = gq[4 * n + j] * tau;
    const T o = A.opacities[n], e = std::exp(-A.t_scale[n]), u = tau * e;
    const T log_p = LogSigmoid(o) - u * u;
    // d logit / d log_p = 1 / (1 - p); the clamp passes gradients where log_p <= its bound (as torch).
    const T gl = log_p <= static_cast<T>(kMaxLogOpacity) ? go[n] / -std::expm1(log_p) : T(0);
    g_opacities[n] = gl / (1 + std::exp(o));  // d logsigmoid(o) / do = sigmoid(-o)
    g_t_center[n] = gl * 2 * u * e;           // d log_p / d tau = -2 u e, and d tau / d t_center = -1
    g_t_scale[n] = gl * 2 * u * u;
  }
}

void CheckRows(const at::Tensor& x, const char* name, at::ScalarType dt, int64_t N, std::vector<int64_t> tail) {
  std::vector<int64_t> shape{N};
  shape.insert(shape.end(), tail.begin(), tail.end());
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == dt, "motion: ", name, " must be a CPU tensor of means' dtype");
  TORCH_CHECK(x.sizes() == at::IntArrayRef(shape), "motion: ", name, " has shape ", x.sizes(), ", expected ",
              at::IntArrayRef(shape));
}

at::ScalarType CheckMeans(const at::Tensor& means) {
  const auto dt = means.scalar_type();
  TORCH_CHECK(means.device().is_cpu() && (dt == at::kFloat || dt == at::kDouble),
              "motion: float32 or float64 CPU tensors expected");
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "motion: means must be [N, 3]");
  return dt;
}

void CheckKeyframe(const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats,
                   const at::Tensor& kf_means, const at::Tensor& kf_quats, const at::Tensor& dynamic,
                   const std::vector<int64_t>& pos_cols, const std::vector<double>& pos_coefs,
                   const std::vector<int64_t>& rot_cols) {
  const auto dt = CheckMeans(means);
  const int64_t N = means.size(0);
  TORCH_CHECK(kf_means.dim() == 3 && kf_means.size(1) >= 1, "motion: kf_means must be [N, K, 3]");
  const int64_t K = kf_means.size(1);
  CheckRows(velocity, "velocity", dt, N, {3});
  CheckRows(quats, "quats", dt, N, {4});
  CheckRows(kf_means, "kf_means", dt, N, {K, 3});
  CheckRows(kf_quats, "kf_quats", dt, N, {K, 4});
  CheckRows(dynamic, "dynamic", dt, N, {});
  TORCH_CHECK(pos_cols.size() == pos_coefs.size() && !pos_cols.empty(),
              "motion: one coefficient per keyframe column expected");
  TORCH_CHECK(rot_cols.size() == 2, "motion: two rotation keyframe columns expected");
  for (int64_t c : pos_cols) TORCH_CHECK(c >= 0 && c < K, "motion: keyframe column out of range");
  for (int64_t c : rot_cols) TORCH_CHECK(c >= 0 && c < K, "motion: keyframe column out of range");
}

void CheckSpacetime(const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
                    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale) {
  const auto dt = CheckMeans(means);
  const int64_t N = means.size(0);
  CheckRows(motion, "motion", dt, N, {9});
  CheckRows(quats, "quats", dt, N, {4});
  CheckRows(omega, "omega", dt, N, {4});
  CheckRows(opacities, "opacities", dt, N, {});
  CheckRows(t_center, "t_center", dt, N, {});
  CheckRows(t_scale, "t_scale", dt, N, {});
}

std::tuple<at::Tensor, at::Tensor> KeyframeMotionForwardCpu(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s) {
  const auto m = means.contiguous(), v = velocity.contiguous(), q = quats.contiguous();
  const auto km = kf_means.contiguous(), kq = kf_quats.contiguous(), dyn = dynamic.contiguous();
  const int64_t N = m.size(0);
  auto means_t = at::empty({N, 3}, m.options()), quats_t = at::empty({N, 4}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "keyframe_motion_forward_cpu", [&] {
    const auto A = MakeKeyframeArgs<scalar_t>(m, v, q, km, kq, dyn, t, pos_cols, pos_coefs, rot_cols, s);
    KeyframeForwardKernel<scalar_t>(A, means_t.data_ptr<scalar_t>(), quats_t.data_ptr<scalar_t>());
  });
  return {means_t, quats_t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> KeyframeMotionBackwardCpu(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t) {
  const auto m = means.contiguous(), v = velocity.contiguous(), q = quats.contiguous();
  const auto km = kf_means.contiguous(), kq = kf_quats.contiguous(), dyn = dynamic.contiguous();
  const auto gm = grad_means_t.contiguous(), gq = grad_quats_t.contiguous();
  auto g_means = at::empty_like(m), g_velocity = at::empty_like(m), g_quats = at::empty_like(q);
  auto g_kf_means = at::empty_like(km), g_kf_quats = at::empty_like(kq);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "keyframe_motion_backward_cpu", [&] {
    const auto A = MakeKeyframeArgs<scalar_t>(m, v, q, km, kq, dyn, t, pos_cols, pos_coefs, rot_cols, s);
    KeyframeBackwardKernel<scalar_t>(A, gm.data_ptr<scalar_t>(), gq.data_ptr<scalar_t>(),
                                     g_means.data_ptr<scalar_t>(), g_velocity.data_ptr<scalar_t>(),
                                     g_quats.data_ptr<scalar_t>(), g_kf_means.data_ptr<scalar_t>(),
                                     g_kf_quats.data_ptr<scalar_t>());
  });
  return {g_means, g_velocity, g_quats, g_kf_means, g_kf_quats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> SpacetimeMotionForwardCpu(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t) {
  const auto m = means.contiguous(), c = motion.contiguous(), q = quats.contiguous(), w = omega.contiguous();
  const auto o = opacities.contiguous(), tc = t_center.contiguous(), ts = t_scale.contiguous();
  const int64_t N = m.size(0);
  auto means_t = at::empty({N, 3}, m.options()), quats_t = at::empty({N, 4}, m.options());
  auto opacity_t = at::empty({N}, m.options());
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "spacetime_motion_forward_cpu", [&] {
    const auto A = MakeSpacetimeArgs<scalar_t>(m, c, q, w, o, tc, ts, t);
    SpacetimeForwardKernel<scalar_t>(A, means_t.data_ptr<scalar_t>(), quats_t.data_ptr<scalar_t>(),
                                     opacity_t.data_ptr<scalar_t>());
  });
  return {means_t, quats_t, opacity_t};
}

std::vector<at::Tensor> SpacetimeMotionBackwardCpu(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t, const at::Tensor& grad_opacity_t) {
  const auto m = means.contiguous(), c = motion.contiguous(), q = quats.contiguous(), w = omega.contiguous();
  const auto o = opacities.contiguous(), tc = t_center.contiguous(), ts = t_scale.contiguous();
  const auto gm = grad_means_t.contiguous(), gq = grad_quats_t.contiguous(), go = grad_opacity_t.contiguous();
  std::vector<at::Tensor> g{at::empty_like(m), at::empty_like(c), at::empty_like(q), at::empty_like(w),
                            at::empty_like(o), at::empty_like(tc), at::empty_like(ts)};
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "spacetime_motion_backward_cpu", [&] {
    const auto A = MakeSpacetimeArgs<scalar_t>(m, c, q, w, o, tc, ts, t);
    SpacetimeBackwardKernel<scalar_t>(A, gm.data_ptr<scalar_t>(), gq.data_ptr<scalar_t>(), go.data_ptr<scalar_t>(),
                                      g[0].data_ptr<scalar_t>(), g[1].data_ptr<scalar_t>(), g[2].data_ptr<scalar_t>(),
                                      g[3].data_ptr<scalar_t>(), g[4].data_ptr<scalar_t>(), g[5].data_ptr<scalar_t>(),
                                      g[6].data_ptr<scalar_t>());
  });
  return g;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> KeyframeMotionForward(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s) {
  CheckKeyframe(means, velocity, quats, kf_means, kf_quats, dynamic, pos_cols, pos_coefs, rot_cols);
  return KeyframeMotionForwardCpu(means, velocity, quats, kf_means, kf_quats, dynamic, t, pos_cols, pos_coefs,
                                  rot_cols, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> KeyframeMotionBackward(
    const at::Tensor& means, const at::Tensor& velocity, const at::Tensor& quats, const at::Tensor& kf_means,
    const at::Tensor& kf_quats, const at::Tensor& dynamic, double t, const std::vector<int64_t>& pos_cols,
    const std::vector<double>& pos_coefs, const std::vector<int64_t>& rot_cols, double s,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t) {
  CheckKeyframe(means, velocity, quats, kf_means, kf_quats, dynamic, pos_cols, pos_coefs, rot_cols);
  const auto dt = means.scalar_type();
  const int64_t N = means.size(0);
  CheckRows(grad_means_t, "grad_means_t", dt, N, {3});
  CheckRows(grad_quats_t, "grad_quats_t", dt, N, {4});
  return KeyframeMotionBackwardCpu(means, velocity, quats, kf_means, kf_quats, dynamic, t, pos_cols, pos_coefs,
                                   rot_cols, s, grad_means_t, grad_quats_t);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> SpacetimeMotionForward(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t) {
  CheckSpacetime(means, motion, quats, omega, opacities, t_center, t_scale);
  return SpacetimeMotionForwardCpu(means, motion, quats, omega, opacities, t_center, t_scale, t);
}

std::vector<at::Tensor> SpacetimeMotionBackward(
    const at::Tensor& means, const at::Tensor& motion, const at::Tensor& quats, const at::Tensor& omega,
    const at::Tensor& opacities, const at::Tensor& t_center, const at::Tensor& t_scale, double t,
    const at::Tensor& grad_means_t, const at::Tensor& grad_quats_t, const at::Tensor& grad_opacity_t) {
  CheckSpacetime(means, motion, quats, omega, opacities, t_center, t_scale);
  const auto dt = means.scalar_type();
  const int64_t N = means.size(0);
  CheckRows(grad_means_t, "grad_means_t", dt, N, {3});
  CheckRows(grad_quats_t, "grad_quats_t", dt, N, {4});
  CheckRows(grad_opacity_t, "grad_opacity_t", dt, N, {});
  return SpacetimeMotionBackwardCpu(means, motion, quats, omega, opacities, t_center, t_scale, t, grad_means_t,
                                    grad_quats_t, grad_opacity_t);
}
