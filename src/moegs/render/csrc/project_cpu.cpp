// CPU implementation of the fused projection and colour (forward and hand-written backward).
//
// Semantics are those of the pure-PyTorch reference (moegs/render/projection.py,
// project_and_color) and of 3DGS / gsplat's fully fused projection:
//   p = R_w mean + t_w (camera space), kept when near < z < far;
//   Sigma = R S S^T R^T from the normalised quaternion and exp(log_scales);
//   J = perspective Jacobian at the centre clamped to 1.3x the view frustum;
//   cov2d = (J R_w) Sigma (J R_w)^T + 0.3 I; kept when det > 1e-12; conic = cov2d^-1;
//   radius = ceil(3 sqrt(lambda_max)) with lambda_max = mid + sqrt(max(mid^2 - det, 0.1)),
//   0 when culled or when the 3-sigma square is entirely off-screen;
//   rgb = max(SH(normalise(mean - center)) + 0.5, 0) (degrees 0..3, 3DGS sign convention).
// For culled Gaussians the reference replaces z (and det) by 1 in the denominators; the
// gradients here follow the same formulas, so they agree with autograd on the reference
// for every Gaussian, culled or not.
//
// Precision: inputs and outputs are float32 or float64; the per-Gaussian arithmetic is done in
// double either way (ill-conditioned 2D covariances - needle-like Gaussians - lose digits in
// det = ac - b^2 otherwise), so float32 results are the correctly rounded double ones.
//
// Vectorisation: both passes take eight Gaussians at a time (kLanes), one per lane of a vector of
// doubles, so the geometry, radii, SH basis and their gradients run as vector instructions; the
// colour sums and the coefficients' gradients, which read each Gaussian's own row, stay per Gaussian.
//
// Parallelism: OpenMP over blocks of Gaussians with at::get_num_threads() threads (the same count as
// torch's intra-op pool, so the native ops never oversubscribe the cores). Every Gaussian
// reads and writes only its own slots: no atomics, results independent of the thread count.

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "project.h"

namespace {

// Both passes compute on Vec: kLanes Gaussians at once, one per lane (GCC/Clang vector extensions; where the
// CPU's registers are narrower than a Vec the compiler splits it). The helpers below keep the per-Gaussian
// formulas readable: a condition is a lane mask and Select picks per lane.
constexpr int kLanes = 8;
typedef double Vec __attribute__((vector_size(kLanes * sizeof(double))));
// Vec never crosses this file's boundary (every function here is internal), so GCC's note that passing one
// by value changes the ABI where registers are narrower does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename T>
using MaskOf = decltype(T{} < T{});  // for Vec a vector of 0 / -1 per lane

template <typename T>
inline T Splat(double v) { return T{} + v; }
template <typename M, typename T>
inline T Select(M c, T a, T b) { return c ? a : b; }
// std::max / std::min's semantics, NaN included: max(a, b) = a < b ? b : a, min(a, b) = b < a ? b : a.
template <typename T>
inline T Max(T a, T b) { return Select(a < b, b, a); }
template <typename T>
inline T Min(T a, T b) { return Select(b < a, b, a); }
inline Vec Sqrt(Vec a) {
  Vec r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrt(a[i]);
  return r;
}
inline Vec Ceil(Vec a) {
  Vec r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_ceil(a[i]);
  return r;
}

constexpr double kBlur = 0.3;      // low-pass filter added to the 2D covariance
constexpr double kClamp = 0.15;    // frustum margin of the Jacobian: 1.3x the image (0.15 each side)
constexpr double kDetMin = 1e-12;  // degenerate 2D covariances are culled
constexpr double kNormEps = 1e-12; // F.normalize's epsilon

constexpr double kC0 = 0.28209479177387814;
constexpr double kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                           0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                           -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

template <typename T>
struct Camera {
  T R[9];  // world-to-camera rotation, row-major
  T t[3];
  T center[3];
  T fx, fy, cx, cy, near, far;
  T lo_x, hi_x, lo_y, hi_y;  // Jacobian clamp of x/z and y/z
  T width, height;
};

template <typename T, typename S>
Camera<T> MakeCamera(const at::Tensor& viewmat, const at::Tensor& center, double fx, double fy, double cx, double cy,
                     int64_t width, int64_t height, double near, double far) {
  Camera<T> cam;
  auto v = viewmat.contiguous();
  auto c = center.contiguous();
  const S* vp = v.data_ptr<S>();
  const S* cp = c.data_ptr<S>();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = T(vp[4 * i + j]);
    cam.t[i] = T(vp[4 * i + 3]);
    cam.center[i] = T(cp[i]);
  }
  cam.fx = T(fx), cam.fy = T(fy), cam.cx = T(cx), cam.cy = T(cy), cam.near = T(near), cam.far = T(far);
  // Same operation order as the reference: (-cx / fx - 0.15 W / fx) etc.
  const T mx = T(kClamp) * T(width) / T(fx);
  const T my = T(kClamp) * T(height) / T(fy);
  cam.lo_x = -T(cx) / T(fx) - mx;
  cam.hi_x = (T(width) - T(cx)) / T(fx) + mx;
  cam.lo_y = -T(cy) / T(fy) - my;
  cam.hi_y = (T(height) - T(cy)) / T(fy) + my;
  cam.width = T(width), cam.height = T(height);
  return cam;
}

// Rotation matrix (row-major) of the unit quaternion q = (w, x, y, z).
template <typename T>
inline void QuatToRot(const T q[4], T Rm[9]) {
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  Rm[0] = 1.0 - 2.0 * (y * y + z * z), Rm[1] = 2.0 * (x * y - w * z), Rm[2] = 2.0 * (x * z + w * y);
  Rm[3] = 2.0 * (x * y + w * z), Rm[4] = 1.0 - 2.0 * (x * x + z * z), Rm[5] = 2.0 * (y * z - w * x);
  Rm[6] = 2.0 * (x * z - w * y), Rm[7] = 2.0 * (y * z + w * x), Rm[8] = 1.0 - 2.0 * (x * x + y * y);
}

// dL/dq for the unit quaternion q given dL/dR (row-major).
template <typename T>
inline void QuatToRotBackward(const T q[4], const T g[9], T gq[4]) {
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  gq[0] = 2.0 * (-z * g[1] + y * g[2] + z * g[3] - x * g[5] - y * g[6] + x * g[7]);
  gq[1] = 2.0 * (y * g[1] + z * g[2] + y * g[3] - 2.0 * x * g[4] - w * g[5] + z * g[6] + w * g[7] - 2.0 * x * g[8]);
  gq[2] = 2.0 * (-2.0 * y * g[0] + x * g[1] + w * g[2] + x * g[3] + z * g[5] - w * g[6] + z * g[7] - 2.0 * y * g[8]);
  gq[3] = 2.0 * (-2.0 * z * g[0] - w * g[1] + x * g[2] + w * g[3] - 2.0 * z * g[4] + y * g[5] + x * g[6] + y * g[7]);
}

// v / max(|v|, eps) (F.normalize) and its backward.
template <typename T, int D>
inline T Normalize(const T* v, T* out) {
  T n2{};
  for (int i = 0; i < D; ++i) n2 += v[i] * v[i];
  const T n = Max(Sqrt(n2), Splat<T>(kNormEps));
  for (int i = 0; i < D; ++i) out[i] = v[i] / n;
  return n;
}

template <typename T, int D>
inline void NormalizeBackward(const T* v, T n, const T* g, T* gv) {
  T n2{}, dot{};
  for (int i = 0; i < D; ++i) n2 += v[i] * v[i], dot += v[i] * g[i];
  const auto big = Sqrt(n2) > kNormEps;  // else n is the epsilon, a constant
  for (int i = 0; i < D; ++i) gv[i] = Select(big, (g[i] - v[i] * dot / (n * n)) / n, g[i] / n);
}

// The 3DGS real SH basis at unit direction d, degrees 0 to 3 (16 values; a lower degree reads the first
// (degree + 1)^2: computing them all costs a few multiplications and keeps the forward's lanes branch-free).
template <typename T>
inline void ShBasis(const T d[3], T* b) {
  b[0] = Splat<T>(kC0);
  const T x = d[0], y = d[1], z = d[2];
  b[1] = -kC1 * y, b[2] = kC1 * z, b[3] = -kC1 * x;
  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = kC2[0] * xy, b[5] = kC2[1] * yz, b[6] = kC2[2] * (2.0 * zz - xx - yy);
  b[7] = kC2[3] * xz, b[8] = kC2[4] * (xx - yy);
  b[9] = kC3[0] * y * (3.0 * xx - yy);
  b[10] = kC3[1] * xy * z;
  b[11] = kC3[2] * y * (4.0 * zz - xx - yy);
  b[12] = kC3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy);
  b[13] = kC3[4] * x * (4.0 * zz - xx - yy);
  b[14] = kC3[5] * z * (xx - yy);
  b[15] = kC3[6] * x * (xx - 3.0 * yy);
}

// dL/dd = sum_k gb[k] d basis_k / dd (the basis as a polynomial in d's components).
template <typename T>
inline void ShBasisBackward(int degree, const T d[3], const T* gb, T gd[3]) {
  gd[0] = gd[1] = gd[2] = T{};
  if (degree < 1) return;
  const T x = d[0], y = d[1], z = d[2];
  gd[0] += -kC1 * gb[3], gd[1] += -kC1 * gb[1], gd[2] += kC1 * gb[2];
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  gd[0] += kC2[0] * y * gb[4] + kC2[2] * (-2.0 * x) * gb[6] + kC2[3] * z * gb[7] + kC2[4] * 2.0 * x * gb[8];
  gd[1] += kC2[0] * x * gb[4] + kC2[1] * z * gb[5] + kC2[2] * (-2.0 * y) * gb[6] + kC2[4] * (-2.0 * y) * gb[8];
  gd[2] += kC2[1] * y * gb[5] + kC2[2] * 4.0 * z * gb[6] + kC2[3] * x * gb[7];
  if (degree < 3) return;
  // b9 = c y (3xx - yy)
  gd[0] += kC3[0] * 6.0 * x * y * gb[9];
  gd[1] += kC3[0] * (3.0 * xx - 3.0 * yy) * gb[9];
  // b10 = c x y z
  gd[0] += kC3[1] * y * z * gb[10], gd[1] += kC3[1] * x * z * gb[10], gd[2] += kC3[1] * x * y * gb[10];
  // b11 = c y (4zz - xx - yy)
  gd[0] += kC3[2] * (-2.0 * x * y) * gb[11];
  gd[1] += kC3[2] * (4.0 * zz - xx - 3.0 * yy) * gb[11];
  gd[2] += kC3[2] * 8.0 * y * z * gb[11];
  // b12 = c z (2zz - 3xx - 3yy)
  gd[0] += kC3[3] * (-6.0 * x * z) * gb[12];
  gd[1] += kC3[3] * (-6.0 * y * z) * gb[12];
  gd[2] += kC3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy) * gb[12];
  // b13 = c x (4zz - xx - yy)
  gd[0] += kC3[4] * (4.0 * zz - 3.0 * xx - yy) * gb[13];
  gd[1] += kC3[4] * (-2.0 * x * y) * gb[13];
  gd[2] += kC3[4] * 8.0 * x * z * gb[13];
  // b14 = c z (xx - yy)
  gd[0] += kC3[5] * 2.0 * x * z * gb[14];
  gd[1] += kC3[5] * (-2.0 * y * z) * gb[14];
  gd[2] += kC3[5] * (xx - yy) * gb[14];
  // b15 = c x (xx - 3yy)
  gd[0] += kC3[6] * (3.0 * xx - 3.0 * yy) * gb[15];
  gd[1] += kC3[6] * (-6.0 * x * y) * gb[15];
}

// SH coefficients held in two parts along the band axis ([N, na, 3] and [N, nb, 3]): band k of
// Gaussian n, wherever it lives (P: const S* for the coefficients, S* for their gradients).
template <typename P>
struct ShParts {
  P a, b;
  int64_t na, nb;
  P At(int64_t n, int64_t k) const { return k < na ? a + (n * na + k) * 3 : b + (n * nb + k - na) * 3; }
  int64_t Count() const { return na + nb; }
};

// Per-Gaussian geometry (one lane per Gaussian) shared by the forward and the backward.
template <typename T>
struct Geometry {
  T p[3];             // camera-space centre
  MaskOf<T> in_depth; // near < z < far
  T zs;               // z, or 1 when outside the depth range
  T u, v;             // x / zs, y / zs before clamping
  T tx, ty;           // clamped centre used by the Jacobian
  T J[6];             // [2, 3] row-major
  T T2[6];            // J R_w, [2, 3]
  T qn[4];            // normalised quaternion
  T qnorm;            // max(|q|, eps)
  T rot[9];
  T s[3];             // exp(log_scales)
  T M[9];             // rot * diag(s)
  T cov[6];           // 3D covariance, upper triangle xx xy xz yy yz zz
  T a, b, c;          // 2D covariance (with blur)
  MaskOf<T> valid;    // in_depth && det > eps
  T det_s;            // det, or 1 when invalid
};

// The geometry of a Vec of Gaussians: centre m, quaternion q and scales s = exp(log_scales)
// (the caller takes the exponential).
template <typename T>
inline void ComputeGeometry(const Camera<double>& cam, const T m[3], const T q[4], const T s[3], Geometry<T>& g) {
  const double* R = cam.R;
  for (int i = 0; i < 3; ++i) g.p[i] = R[3 * i] * m[0] + R[3 * i + 1] * m[1] + R[3 * i + 2] * m[2] + cam.t[i];
  const T x = g.p[0], y = g.p[1], z = g.p[2];
  g.in_depth = (z > cam.near) & (z < cam.far);
  g.zs = Select(g.in_depth, z, Splat<T>(1.0));
  const T zs = g.zs;
  g.u = x / zs, g.v = y / zs;
  g.tx = Min(Max(g.u, Splat<T>(cam.lo_x)), Splat<T>(cam.hi_x)) * zs;
  g.ty = Min(Max(g.v, Splat<T>(cam.lo_y)), Splat<T>(cam.hi_y)) * zs;
  g.J[0] = cam.fx / zs, g.J[1] = T{}, g.J[2] = -cam.fx * g.tx / (zs * zs);
  g.J[3] = T{}, g.J[4] = cam.fy / zs, g.J[5] = -cam.fy * g.ty / (zs * zs);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      g.T2[3 * i + j] = g.J[3 * i] * R[j] + g.J[3 * i + 1] * R[3 + j] + g.J[3 * i + 2] * R[6 + j];

  g.qnorm = Normalize<T, 4>(q, g.qn);
  QuatToRot(g.qn, g.rot);
  for (int j = 0; j < 3; ++j) g.s[j] = s[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.M[3 * i + j] = g.rot[3 * i + j] * g.s[j];
  const T* M = g.M;
  auto dot3 = [](const T* r0, const T* r1) { return r0[0] * r1[0] + r0[1] * r1[1] + r0[2] * r1[2]; };
  g.cov[0] = dot3(M, M), g.cov[1] = dot3(M, M + 3), g.cov[2] = dot3(M, M + 6);
  g.cov[3] = dot3(M + 3, M + 3), g.cov[4] = dot3(M + 3, M + 6), g.cov[5] = dot3(M + 6, M + 6);
  // cov2d = T2 Sigma T2^T
  const T Sig[9] = {g.cov[0], g.cov[1], g.cov[2], g.cov[1], g.cov[3], g.cov[4], g.cov[2], g.cov[4], g.cov[5]};
  T TS[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      TS[3 * i + j] = g.T2[3 * i] * Sig[j] + g.T2[3 * i + 1] * Sig[3 + j] + g.T2[3 * i + 2] * Sig[6 + j];
  g.a = dot3(TS, g.T2) + kBlur;
  g.b = dot3(TS, g.T2 + 3);
  g.c = dot3(TS + 3, g.T2 + 3) + kBlur;
  const T det = g.a * g.c - g.b * g.b;
  g.valid = g.in_depth & (det > kDetMin);
  g.det_s = Select(g.valid, det, Splat<T>(1.0));
}

// The geometry of the kLanes Gaussians from n0 (a short last block repeats its last Gaussian in the spare
// lanes); m and q keep their centres and raw quaternions, which the passes read again.
template <typename S>
inline void BlockGeometry(const Camera<double>& cam, int64_t n0, int lanes, const S* means, const S* quats,
                          const S* log_scales, Vec m[3], Vec q[4], Geometry<Vec>& g) {
  Vec s[3];
  for (int l = 0; l < kLanes; ++l) {
    const int64_t n = n0 + std::min(l, lanes - 1);
    for (int j = 0; j < 3; ++j) m[j][l] = double(means[3 * n + j]);
    for (int j = 0; j < 4; ++j) q[j][l] = double(quats[4 * n + j]);
    for (int j = 0; j < 3; ++j) s[j][l] = std::exp(double(log_scales[3 * n + j]));
  }
  ComputeGeometry(cam, m, q, s, g);
}

// The forward takes kLanes Gaussians at a time: their inputs are staged as Vecs of doubles, their
// geometry, radii and SH basis computed in vector registers, and the outputs written back per Gaussian.
template <typename S>
void ForwardKernel(const Camera<double>& cam, int64_t N, const S* means, const S* quats, const S* log_scales,
                   const ShParts<const S*>& coeffs, int sh_degree, S* means2d, S* conics, S* depths, int32_t* radii,
                   S* rgb) {
  const int nb = sh_degree >= 0 ? (sh_degree + 1) * (sh_degree + 1) : 0;
  const int64_t blocks = (N + kLanes - 1) / kLanes;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t n0 = blk * kLanes;
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, N - n0));
    Vec m[3], q[4];
    Geometry<Vec> g;
    BlockGeometry(cam, n0, lanes, means, quats, log_scales, m, q, g);
    const Vec mx = cam.fx * g.p[0] / g.zs + cam.cx;
    const Vec my = cam.fy * g.p[1] / g.zs + cam.cy;
    const Vec conic[3] = {g.c / g.det_s, -g.b / g.det_s, g.a / g.det_s};
    const Vec mid = 0.5 * (g.a + g.c);
    const Vec lam = mid + Sqrt(Max(mid * mid - g.det_s, Splat<Vec>(0.1)));
    const Vec r = Ceil(3.0 * Sqrt(lam));
    const auto on_screen = (mx + r > 0.0) & (mx - r < cam.width) & (my + r > 0.0) & (my - r < cam.height);
    const double big = std::numeric_limits<double>::max();  // |x| <= max: finite (false for NaN)
    const auto finite = (Max(r, -r) <= big) & (Max(mx, -mx) <= big) & (Max(my, -my) <= big);
    const Vec radius = Select(g.valid & on_screen & finite, r, Splat<Vec>(0.0));
    Vec v[3] = {m[0] - cam.center[0], m[1] - cam.center[1], m[2] - cam.center[2]};
    Vec d[3];
    Normalize<Vec, 3>(v, d);
    // Per-lane reads go through plain arrays: outputs (means2d, conics, depth, radius), then the SH basis.
    alignas(64) double out[7 + 16][kLanes];
    const Vec rows[7] = {mx, my, conic[0], conic[1], conic[2], g.p[2], radius};
    std::memcpy(out, rows, sizeof(rows));
    Vec basis[16];
    ShBasis(d, basis);
    std::memcpy(out + 7, basis, sizeof(basis));
    for (int l = 0; l < lanes; ++l) {
      const int64_t n = n0 + l;
      means2d[2 * n] = S(out[0][l]), means2d[2 * n + 1] = S(out[1][l]);
      for (int j = 0; j < 3; ++j) conics[3 * n + j] = S(out[2 + j][l]);
      depths[n] = S(out[5][l]);
      radii[n] = static_cast<int32_t>(out[6][l]);
      if (nb > 0) {
        double acc[3] = {0, 0, 0};
        for (int k = 0; k < nb; ++k) {
          const S* c = coeffs.At(n, k);
          for (int ch = 0; ch < 3; ++ch) acc[ch] += out[7 + k][l] * double(c[ch]);
        }
        for (int ch = 0; ch < 3; ++ch) rgb[3 * n + ch] = S(std::max(acc[ch] + 0.5, 0.0));
      }
    }
  }
}

// The backward takes kLanes Gaussians at a time, as the forward. It is linear in the upstream gradients: a
// Gaussian none of them reach (culled, fully hidden, or transparent at this time) gets exact zeros, and a
// block of such Gaussians is not computed at all.
template <typename S>
void BackwardKernel(const Camera<double>& cam, int64_t N, const S* means, const S* quats, const S* log_scales,
                    const ShParts<const S*>& coeffs, int sh_degree, const S* g_means2d, const S* g_conics,
                    const S* g_depths, const S* g_rgb, S* gm_out, S* gq_out, S* gls_out, const ShParts<S*>& gco) {
  const int nb = sh_degree >= 0 ? (sh_degree + 1) * (sh_degree + 1) : 0;
  const double* R = cam.R;
  const int64_t blocks = (N + kLanes - 1) / kLanes;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(dynamic, 64)  // skipped blocks make the load uneven
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t n0 = blk * kLanes;
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, N - n0));
    bool reached[kLanes] = {};
    bool any = false;
    for (int l = 0; l < lanes; ++l) {
      const int64_t n = n0 + l;
      bool r = g_depths[n] != S(0);
      for (int j = 0; j < 2; ++j) r |= g_means2d[2 * n + j] != S(0);
      for (int j = 0; j < 3; ++j) r |= g_conics[3 * n + j] != S(0);
      for (int j = 0; nb > 0 && j < 3; ++j) r |= g_rgb[3 * n + j] != S(0);
      reached[l] = r;
      any |= r;
    }
    auto write_zeros = [&](int l) {
      const int64_t n = n0 + l;
      std::fill(gm_out + 3 * n, gm_out + 3 * n + 3, S(0));
      std::fill(gq_out + 4 * n, gq_out + 4 * n + 4, S(0));
      std::fill(gls_out + 3 * n, gls_out + 3 * n + 3, S(0));
      for (int64_t k = 0; nb > 0 && k < gco.Count(); ++k) std::fill(gco.At(n, k), gco.At(n, k) + 3, S(0));
    };
    if (!any) {
      for (int l = 0; l < lanes; ++l) write_zeros(l);
      continue;
    }
    Vec m[3], q[4];
    Geometry<Vec> g;
    BlockGeometry(cam, n0, lanes, means, quats, log_scales, m, q, g);
    Vec gmx{}, gmy{}, gcon[3]{}, gdep{};  // upstream gradients; none in the spare lanes
    for (int l = 0; l < lanes; ++l) {
      const int64_t n = n0 + l;
      gmx[l] = double(g_means2d[2 * n]), gmy[l] = double(g_means2d[2 * n + 1]);
      for (int j = 0; j < 3; ++j) gcon[j][l] = double(g_conics[3 * n + j]);
      gdep[l] = double(g_depths[n]);
    }
    const Vec x = g.p[0], y = g.p[1], zs = g.zs;
    Vec gp[3] = {Vec{}, Vec{}, gdep};  // dL/d p (camera space)
    Vec gzs{};

    // means2d = (fx x / zs + cx, fy y / zs + cy)
    gp[0] += gmx * cam.fx / zs;
    gp[1] += gmy * cam.fy / zs;
    gzs -= (gmx * cam.fx * x + gmy * cam.fy * y) / (zs * zs);

    // conics = (c, -b, a) / det_s; det_s is the determinant where the Gaussian is valid, 1 elsewhere
    const Vec g0 = gcon[0], g1 = gcon[1], g2 = gcon[2];
    const Vec ds = g.det_s;
    Vec ga = g2 / ds, gb = -g1 / ds, gc = g0 / ds;
    const Vec gdet = -(g0 * g.c - g1 * g.b + g2 * g.a) / (ds * ds);
    ga = Select(g.valid, ga + gdet * g.c, ga);
    gc = Select(g.valid, gc + gdet * g.a, gc);
    gb = Select(g.valid, gb - 2.0 * gdet * g.b, gb);

    // cov2d = T2 Sigma T2^T with dL/dcov2d = G = [[ga, gb], [0, gc]] (b is read from entry (0, 1)).
    // dL/dT2 = (G + G^T) T2 Sigma, dL/dSigma = T2^T G T2 (symmetrised below).
    const Vec Sig[9] = {g.cov[0], g.cov[1], g.cov[2], g.cov[1], g.cov[3], g.cov[4], g.cov[2], g.cov[4], g.cov[5]};
    const Vec Gs[4] = {2.0 * ga, gb, gb, 2.0 * gc};  // G + G^T
    Vec TS[6];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        TS[3 * i + j] = g.T2[3 * i] * Sig[j] + g.T2[3 * i + 1] * Sig[3 + j] + g.T2[3 * i + 2] * Sig[6 + j];
    Vec gT2[6];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) gT2[3 * i + j] = Gs[2 * i] * TS[j] + Gs[2 * i + 1] * TS[3 + j];
    // symmetric dL/dSigma: 0.5 (T2^T (G + G^T) T2) counts each off-diagonal pair once per entry
    Vec gS[9];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        const Vec ti0 = g.T2[i], ti1 = g.T2[3 + i], tj0 = g.T2[j], tj1 = g.T2[3 + j];
        gS[3 * i + j] = 0.5 * (ti0 * (Gs[0] * tj0 + Gs[1] * tj1) + ti1 * (Gs[2] * tj0 + Gs[3] * tj1));
      }
    // Sigma = M M^T -> dL/dM = (gS + gS^T) M = 2 gS M
    Vec gM[9];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        gM[3 * i + j] = 2.0 * (gS[3 * i] * g.M[j] + gS[3 * i + 1] * g.M[3 + j] + gS[3 * i + 2] * g.M[6 + j]);
    // M = rot diag(s)
    Vec grot[9];
    Vec gls[3] = {};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        grot[3 * i + j] = gM[3 * i + j] * g.s[j];
        gls[j] += gM[3 * i + j] * g.rot[3 * i + j];
      }
    for (int j = 0; j < 3; ++j) gls[j] = gls[j] * g.s[j];
    Vec gqn[4], gq[4];
    QuatToRotBackward(g.qn, grot, gqn);
    NormalizeBackward<Vec, 4>(q, g.qnorm, gqn, gq);

    // T2 = J R_w -> dL/dJ = gT2 R_w^T
    Vec gJ[6];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        gJ[3 * i + j] = gT2[3 * i] * R[3 * j] + gT2[3 * i + 1] * R[3 * j + 1] + gT2[3 * i + 2] * R[3 * j + 2];
    const Vec zs2 = zs * zs, zs3 = zs2 * zs;
    gzs += -gJ[0] * cam.fx / zs2 + gJ[2] * 2.0 * cam.fx * g.tx / zs3 - gJ[4] * cam.fy / zs2 +
           gJ[5] * 2.0 * cam.fy * g.ty / zs3;
    const Vec gtx = -gJ[2] * cam.fx / zs2, gty = -gJ[5] * cam.fy / zs2;
    // t = clamp(u, lo, hi) zs with u = x / zs; the clamp passes gradient on [lo, hi]
    const Vec cu = Min(Max(g.u, Splat<Vec>(cam.lo_x)), Splat<Vec>(cam.hi_x));
    const Vec cv = Min(Max(g.v, Splat<Vec>(cam.lo_y)), Splat<Vec>(cam.hi_y));
    gzs += gtx * cu + gty * cv;
    const auto in_x = (g.u >= cam.lo_x) & (g.u <= cam.hi_x);
    const Vec gu = gtx * zs;
    gp[0] = Select(in_x, gp[0] + gu / zs, gp[0]);
    gzs = Select(in_x, gzs - gu * x / zs2, gzs);
    const auto in_y = (g.v >= cam.lo_y) & (g.v <= cam.hi_y);
    const Vec gv = gty * zs;
    gp[1] = Select(in_y, gp[1] + gv / zs, gp[1]);
    gzs = Select(in_y, gzs - gv * y / zs2, gzs);
    gp[2] = Select(g.in_depth, gp[2] + gzs, gp[2]);

    // p = R_w mean + t_w
    Vec gm[3];
    for (int j = 0; j < 3; ++j) gm[j] = R[j] * gp[0] + R[3 + j] * gp[1] + R[6 + j] * gp[2];

    if (nb > 0) {
      // the colour's backward per Gaussian (its coefficients are its own row), the direction's in Vecs
      Vec v[3] = {m[0] - cam.center[0], m[1] - cam.center[1], m[2] - cam.center[2]};
      Vec d[3], basis[16], gbasis[16] = {};
      const Vec vn = Normalize<Vec, 3>(v, d);
      ShBasis(d, basis);
      alignas(64) double bt[16][kLanes], gbt[16][kLanes] = {};
      std::memcpy(bt, basis, sizeof(bt));
      for (int l = 0; l < lanes; ++l) {
        if (!reached[l]) continue;
        const int64_t n = n0 + l;
        double acc[3] = {0, 0, 0}, grgb[3];
        for (int k = 0; k < nb; ++k) {
          const S* c = coeffs.At(n, k);
          for (int ch = 0; ch < 3; ++ch) acc[ch] += bt[k][l] * double(c[ch]);
        }
        for (int ch = 0; ch < 3; ++ch)  // clamp_min passes on [0, inf)
          grgb[ch] = (acc[ch] + 0.5 >= 0.0) ? double(g_rgb[3 * n + ch]) : 0.0;
        for (int k = 0; k < nb; ++k) {
          const S* co = coeffs.At(n, k);
          S* gk = gco.At(n, k);
          double gbk = 0;
          for (int ch = 0; ch < 3; ++ch) {
            gk[ch] = S(bt[k][l] * grgb[ch]);
            gbk += double(co[ch]) * grgb[ch];
          }
          gbt[k][l] = gbk;
        }
        for (int64_t k = nb; k < gco.Count(); ++k) std::fill(gco.At(n, k), gco.At(n, k) + 3, S(0));
      }
      std::memcpy(gbasis, gbt, sizeof(gbt));
      Vec gd[3], gvd[3];
      ShBasisBackward(sh_degree, d, gbasis, gd);
      NormalizeBackward<Vec, 3>(v, vn, gd, gvd);
      gm[0] += gvd[0], gm[1] += gvd[1], gm[2] += gvd[2];
    }
    alignas(64) double out[10][kLanes];  // dL/d means (3), quats (4), log_scales (3)
    const Vec rows[10] = {gm[0], gm[1], gm[2], gq[0], gq[1], gq[2], gq[3], gls[0], gls[1], gls[2]};
    std::memcpy(out, rows, sizeof(rows));
    for (int l = 0; l < lanes; ++l) {
      if (!reached[l]) {
        write_zeros(l);
        continue;
      }
      const int64_t n = n0 + l;
      for (int j = 0; j < 3; ++j) gm_out[3 * n + j] = S(out[j][l]);
      for (int j = 0; j < 4; ++j) gq_out[4 * n + j] = S(out[3 + j][l]);
      for (int j = 0; j < 3; ++j) gls_out[3 * n + j] = S(out[7 + j][l]);
    }
  }
}

void CheckInputs(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                 const at::Tensor& coeffs, const at::Tensor& coeffs_rest, const at::Tensor& viewmat,
                 const at::Tensor& center, int64_t sh_degree) {
  TORCH_CHECK(means.device().is_cpu(), "project: tensors must be on the CPU");
  const auto dt = means.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "project: float32 or float64 expected");
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "project: means must be [N, 3]");
  const int64_t N = means.size(0);
  TORCH_CHECK(quats.sizes() == at::IntArrayRef({N, 4}), "project: quats must be [N, 4]");
  TORCH_CHECK(log_scales.sizes() == at::IntArrayRef({N, 3}), "project: log_scales must be [N, 3]");
  TORCH_CHECK(viewmat.sizes() == at::IntArrayRef({4, 4}), "project: viewmat must be [4, 4]");
  TORCH_CHECK(center.numel() == 3, "project: center must be [3]");
  for (const at::Tensor* t : {&quats, &log_scales, &viewmat, &center})
    TORCH_CHECK(t->scalar_type() == dt && t->device().is_cpu(), "project: all tensors must share means' dtype");
  TORCH_CHECK(sh_degree >= -1 && sh_degree <= 3, "project: sh_degree must be in [-1, 3]");
  if (sh_degree >= 0) {
    for (const at::Tensor* t : {&coeffs, &coeffs_rest}) {
      TORCH_CHECK(t->scalar_type() == dt && t->device().is_cpu(), "project: coeffs must share means' dtype");
      TORCH_CHECK(t->dim() == 3 && t->size(0) == N && t->size(2) == 3, "project: coeffs must be [N, K, 3]");
    }
    TORCH_CHECK(coeffs.size(1) + coeffs_rest.size(1) >= (sh_degree + 1) * (sh_degree + 1),
                "project: too few SH coefficients for sh_degree");
  }
}

// The ShParts view of two [N, K_i, 3] contiguous tensors (coefficients or their gradients); empty
// when sh_degree < 0.
template <typename P>
ShParts<P> PartsOf(const at::Tensor& a, const at::Tensor& b, int64_t sh_degree) {
  using S = std::remove_const_t<std::remove_pointer_t<P>>;
  if (sh_degree < 0) return {nullptr, nullptr, 0, 0};
  return {a.data_ptr<S>(), b.numel() ? b.data_ptr<S>() : nullptr, a.size(1), b.size(1)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectForwardCpu(
    const at::Tensor& means_in, const at::Tensor& quats_in, const at::Tensor& log_scales_in,
    const at::Tensor& coeffs_in, const at::Tensor& coeffs_rest_in, const at::Tensor& viewmat,
    const at::Tensor& center, double fx, double fy, double cx, double cy, int64_t width, int64_t height,
    double near, double far, int64_t sh_degree) {
  const auto means = means_in.contiguous(), quats = quats_in.contiguous(), log_scales = log_scales_in.contiguous();
  const auto coeffs = coeffs_in.contiguous(), coeffs_rest = coeffs_rest_in.contiguous();
  const int64_t N = means.size(0);
  auto opts = means.options();
  auto means2d = at::empty({N, 2}, opts), conics = at::empty({N, 3}, opts), depths = at::empty({N}, opts);
  auto radii = at::empty({N}, opts.dtype(at::kInt));
  auto rgb = at::empty({sh_degree >= 0 ? N : 0, 3}, opts);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward_cpu", [&] {
    const auto cam = MakeCamera<double, scalar_t>(viewmat, center, fx, fy, cx, cy, width, height, near, far);
    ForwardKernel<scalar_t>(cam, N, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
                                    log_scales.data_ptr<scalar_t>(),
                                    PartsOf<const scalar_t*>(coeffs, coeffs_rest, sh_degree),
                                    static_cast<int>(sh_degree), means2d.data_ptr<scalar_t>(),
                                    conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                    radii.data_ptr<int32_t>(), sh_degree >= 0 ? rgb.data_ptr<scalar_t>() : nullptr);
  });
  return {means2d, conics, depths, radii, rgb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectBackwardCpu(
    const at::Tensor& means_in, const at::Tensor& quats_in, const at::Tensor& log_scales_in,
    const at::Tensor& coeffs_in, const at::Tensor& coeffs_rest_in, const at::Tensor& viewmat,
    const at::Tensor& center, double fx, double fy, double cx, double cy, int64_t width, int64_t height,
    double near, double far, int64_t sh_degree, const at::Tensor& grad_means2d_in, const at::Tensor& grad_conics_in,
    const at::Tensor& grad_depths_in, const at::Tensor& grad_rgb_in) {
  const auto means = means_in.contiguous(), quats = quats_in.contiguous(), log_scales = log_scales_in.contiguous();
  const auto coeffs = coeffs_in.contiguous(), coeffs_rest = coeffs_rest_in.contiguous();
  const auto gm2 = grad_means2d_in.contiguous(), gcon = grad_conics_in.contiguous();
  const auto gdep = grad_depths_in.contiguous(), grgb = grad_rgb_in.contiguous();
  const int64_t N = means.size(0);
  const bool sh = sh_degree >= 0;
  auto opts = means.options();
  auto g_means = at::empty({N, 3}, opts), g_quats = at::empty({N, 4}, opts), g_ls = at::empty({N, 3}, opts);
  auto g_coeffs = sh ? at::empty_like(coeffs) : at::empty({0}, opts);
  auto g_coeffs_rest = sh ? at::empty_like(coeffs_rest) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward_cpu", [&] {
    const auto cam = MakeCamera<double, scalar_t>(viewmat, center, fx, fy, cx, cy, width, height, near, far);
    BackwardKernel<scalar_t>(cam, N, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
                                     log_scales.data_ptr<scalar_t>(),
                                     PartsOf<const scalar_t*>(coeffs, coeffs_rest, sh_degree),
                                     static_cast<int>(sh_degree), gm2.data_ptr<scalar_t>(),
                                     gcon.data_ptr<scalar_t>(), gdep.data_ptr<scalar_t>(),
                                     sh ? grgb.data_ptr<scalar_t>() : nullptr, g_means.data_ptr<scalar_t>(),
                                     g_quats.data_ptr<scalar_t>(), g_ls.data_ptr<scalar_t>(),
                                     PartsOf<scalar_t*>(g_coeffs, g_coeffs_rest, sh_degree));
  });
  return {g_means, g_quats, g_ls, g_coeffs, g_coeffs_rest};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectForward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest, const at::Tensor& viewmat, const at::Tensor& center, double fx, double fy,
    double cx, double cy, int64_t width, int64_t height, double near, double far, int64_t sh_degree) {
  CheckInputs(means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, sh_degree);
  return ProjectForwardCpu(means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, fx, fy, cx, cy, width,
                           height, near, far, sh_degree);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ProjectBackward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& coeffs,
    const at::Tensor& coeffs_rest, const at::Tensor& viewmat, const at::Tensor& center, double fx, double fy,
    double cx, double cy, int64_t width, int64_t height, double near, double far, int64_t sh_degree,
    const at::Tensor& grad_means2d, const at::Tensor& grad_conics, const at::Tensor& grad_depths,
    const at::Tensor& grad_rgb) {
  CheckInputs(means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, sh_degree);
  const int64_t N = means.size(0);
  const auto dt = means.scalar_type();
  TORCH_CHECK(grad_means2d.sizes() == at::IntArrayRef({N, 2}) && grad_means2d.scalar_type() == dt,
              "project: grad_means2d must be [N, 2] of means' dtype");
  TORCH_CHECK(grad_conics.sizes() == at::IntArrayRef({N, 3}) && grad_conics.scalar_type() == dt,
              "project: grad_conics must be [N, 3] of means' dtype");
  TORCH_CHECK(grad_depths.sizes() == at::IntArrayRef({N}) && grad_depths.scalar_type() == dt,
              "project: grad_depths must be [N] of means' dtype");
  if (sh_degree >= 0)
    TORCH_CHECK(grad_rgb.sizes() == at::IntArrayRef({N, 3}) && grad_rgb.scalar_type() == dt,
                "project: grad_rgb must be [N, 3] of means' dtype");
  return ProjectBackwardCpu(means, quats, log_scales, coeffs, coeffs_rest, viewmat, center, fx, fy, cx, cy, width,
                            height, near, far, sh_degree, grad_means2d, grad_conics, grad_depths, grad_rgb);
}
