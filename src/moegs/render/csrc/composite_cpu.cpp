// CPU implementation of tile-based alpha compositing (forward and hand-written backward).
//
// Multi-expert: every Gaussian belongs to one of E experts (expert_ids, or expert 0 for all
// when none are given) and the pixel keeps one transmittance and one set of accumulators per
// expert; a Gaussian only reads and updates its own expert's. With one shared depth order this
// is exactly E separate renders, and E = 1 is the ordinary single-image compositing. The forward
// walks, per tile row, only the Gaussians that reach the row; a pixel stops once every expert
// has either hit the cut-off or has no Gaussian left in the row's list.
//
// Semantics are those of the pure-PyTorch reference (moegs/render/_torch_impl.py)
// and of the 3DGS tile rasterizer: pixel centres at integer + 0.5, per-tile
// front-to-back lists, power = -0.5 (a dx^2 + c dy^2) - b dx dy, skipped when
// positive, alpha = min(0.99, opacity exp(power)), skipped below 1/255, and a
// pixel stops at the first Gaussian that would bring its transmittance below
// 1e-4 (that Gaussian is not included).
//
// Parallelism: OpenMP over tiles (dynamic schedule). Each tile's Gaussians are
// first copied into contiguous per-thread arrays; each row of a tile is then
// processed 16 pixels at a time as SIMD lanes. The backward writes gradients
// per (tile, Gaussian) pair - every pair belongs to exactly one tile, so no two
// threads write the same slot - and a final serial pass adds the pairs of each
// Gaussian in a fixed order (deterministic, no atomics).

// Light ATen headers only (no torch/extension.h): keeps this TU quick to compile.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "composite.h"

namespace {

constexpr int kLanes = 16;  // pixels of a tile row composited together

template <typename scalar_t>
struct Limits {
  static constexpr scalar_t kAlphaMin = scalar_t(1.0 / 255.0);
  static constexpr scalar_t kAlphaMax = scalar_t(0.99);
  static constexpr scalar_t kTMin = scalar_t(1e-4);
};

// exp(x) for x <= 0. float: Cephes-style range reduction and degree-6
// polynomial (about 1 ulp), written so that it vectorises; double: std::exp.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double ExpNonPositive(double x) {
  return std::exp(x);
}

// One tile's Gaussians packed contiguously, plus the tile-local rows each can
// reach with alpha >= 1/255 (rows outside [row_lo, row_hi] are skipped; a
// Gaussian with row_lo > row_hi misses the tile).
template <typename scalar_t>
struct TileGaussians {
  int n = 0;
  std::vector<scalar_t> mx, my, ca, cb, cc, op, feat;
  std::vector<int> row_lo, row_hi;
  std::vector<int> eid;  // expert of each Gaussian
  // Per tile row (BuildRows): the Gaussians reaching it, front to back (row_ids[row_start[r]:row_start[r+1]]),
  // whether each is the last of its expert in that row, and the number of experts the row sees.
  std::vector<int> row_start, row_ids, row_experts;
  std::vector<char> row_last;

  void Load(const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities, const scalar_t* features,
            const int32_t* expert_ids, int E, const int64_t* ids, int count, int D, int ox, int oy, int tile_size) {
    n = count;
    eid.resize(count);
    for (int i = 0; i < count; ++i) {
      eid[i] = expert_ids ? expert_ids[ids[i]] : 0;
    }
    for (auto* v : {&mx, &my, &ca, &cb, &cc, &op}) {
      v->resize(count);
    }
    feat.resize(static_cast<size_t>(count) * D);
    row_lo.resize(count);
    row_hi.resize(count);
    for (int i = 0; i < count; ++i) {
      const int64_t g = ids[i];
      mx[i] = means2d[2 * g];
      my[i] = means2d[2 * g + 1];
      ca[i] = conics[3 * g];
      cb[i] = conics[3 * g + 1];
      cc[i] = conics[3 * g + 2];
      op[i] = opacities[g];
      std::copy(features + g * D, features + (g + 1) * D, feat.begin() + static_cast<size_t>(i) * D);
      ReachableRows(i, ox, oy, tile_size);
    }
  }

  void BuildRows(int E, int tile_size) {
    row_start.assign(tile_size + 1, 0);
    for (int i = 0; i < n; ++i) {
      for (int r = row_lo[i]; r <= row_hi[i]; ++r) {
        ++row_start[r + 1];
      }
    }
    for (int r = 0; r < tile_size; ++r) {
      row_start[r + 1] += row_start[r];
    }
    row_ids.resize(row_start[tile_size]);
    row_last.assign(row_start[tile_size], 0);
    cursor.assign(row_start.begin(), row_start.end() - 1);
    for (int i = 0; i < n; ++i) {
      for (int r = row_lo[i]; r <= row_hi[i]; ++r) {
        row_ids[cursor[r]++] = i;
      }
    }
    row_experts.assign(tile_size, 0);
    for (int r = 0; r < tile_size; ++r) {
      seen.assign(E, 0);
      for (int j = row_start[r + 1] - 1; j >= row_start[r]; --j) {
        const int e = eid[row_ids[j]];
        if (!seen[e]) {
          seen[e] = 1;
          row_last[j] = 1;
          ++row_experts[r];
        }
      }
    }
  }

 private:
  std::vector<char> seen;
  std::vector<int> cursor;

 public:

  // Bounding box of the ellipse where opacity exp(power) >= 1/255:
  // max over dx of power at offset dy is -0.5 dy^2 det / a, so |dy| <= sqrt(2 L a / det)
  // with L = log(255 opacity); likewise |dx| <= sqrt(2 L c / det). L is enlarged by 1 so
  // that rounding in the per-pixel float evaluation can never reach past the box.
  void ReachableRows(int i, int ox, int oy, int tile_size) {
    const double a = ca[i], b = cb[i], c = cc[i], o = op[i];
    const double x = mx[i], y = my[i];
    row_lo[i] = 0;
    row_hi[i] = tile_size - 1;
    if (o < (1.0 / 255.0) * (1.0 - 1e-5)) {  // opacity G never reaches 1/255 (G <= 1)
      row_lo[i] = 1;
      row_hi[i] = 0;
      return;
    }
    const double det = a * c - b * b;
    if (!(det > 0.0 && a > 0.0 && c > 0.0) || !std::isfinite(det) || !std::isfinite(x) || !std::isfinite(y)) {
      return;  // not positive definite or not finite: no culling, evaluate every pixel
    }
    const double L = std::max(std::log(255.0 * o), 0.0) + 1.0;
    const double ey = std::sqrt(2.0 * L * a / det);
    const double ex = std::sqrt(2.0 * L * c / det);
    const double hi_bound = tile_size + 1.0;
    const double rlo = std::clamp(std::ceil(y - ey - oy - 0.5), -1.0, hi_bound);
    const double rhi = std::clamp(std::floor(y + ey - oy - 0.5), -1.0, hi_bound);
    const double clo = std::clamp(std::ceil(x - ex - ox - 0.5), -1.0, hi_bound);
    const double chi = std::clamp(std::floor(x + ex - ox - 0.5), -1.0, hi_bound);
    if (chi < 0.0 || clo > tile_size - 1.0) {
      row_lo[i] = 1;
      row_hi[i] = 0;
      return;
    }
    row_lo[i] = static_cast<int>(std::max(rlo, 0.0));
    row_hi[i] = static_cast<int>(std::min(rhi, tile_size - 1.0));
  }
};

// One compositing weight w_i(p) = alpha_i T_i a tile emits (CompositeWeightsCpu): the image row
// e * H * W + y * W + x, the Gaussian and the weight. A tile's entries, in the order the forward
// meets them, are one vector of these.
template <typename scalar_t>
struct WeightEntry {
  int32_t row;
  int32_t col;
  scalar_t val;
};

template <typename scalar_t>
using WeightEntries = std::vector<WeightEntry<scalar_t>>;

// Counting sorts of the weights the tiles emitted: by row (a row keeps its front-to-back order) into
// (cr, c, v), then by column for the transpose (tcr, tc, tv; a column's entries in row order). Tiles
// own disjoint rows, so the row sort runs per tile; the transpose runs per contiguous block of rows,
// each block's entries of a column placed after the previous blocks'. Either layout is the serial
// one, whatever the thread count. `cr` and `tcr` come zeroed; `sinks` is emptied.
template <typename scalar_t>
void WeightsToCsr(std::vector<WeightEntries<scalar_t>>& sinks, int64_t R, int64_t N, int64_t nnz, int32_t* cr,
                  int32_t* c, scalar_t* v, int32_t* tcr, int32_t* tc, scalar_t* tv) {
  const int64_t n_tiles = static_cast<int64_t>(sinks.size());
#pragma omp parallel for schedule(dynamic, 4) num_threads(at::get_num_threads())
  for (int64_t t = 0; t < n_tiles; ++t) {
    for (const auto& e : sinks[t]) {
      ++cr[e.row + 1];
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    cr[r + 1] += cr[r];
  }
  std::vector<int32_t> cursor(cr, cr + R);
#pragma omp parallel for schedule(dynamic, 4) num_threads(at::get_num_threads())
  for (int64_t t = 0; t < n_tiles; ++t) {
    for (const auto& e : sinks[t]) {
      const int32_t at = cursor[e.row]++;
      c[at] = e.col;
      v[at] = e.val;
    }
  }
  std::vector<WeightEntries<scalar_t>>().swap(sinks);
  // Blocks of rows holding about nnz / B entries each.
  const int B = std::max(1, at::get_num_threads());
  std::vector<int64_t> block_row(B + 1, R);
  block_row[0] = 0;
  for (int b = 1, r = 0; b < B; ++b) {
    while (r < R && cr[r] < nnz * b / B) {
      ++r;
    }
    block_row[b] = r;
  }
  std::vector<int32_t> starts(static_cast<size_t>(B) * N, 0);  // per block: counts, then starts, then cursors
#pragma omp parallel for num_threads(B)
  for (int b = 0; b < B; ++b) {
    int32_t* cnt = starts.data() + static_cast<size_t>(b) * N;
    for (int32_t k = cr[block_row[b]]; k < cr[block_row[b + 1]]; ++k) {
      ++cnt[c[k]];
    }
  }
  for (int64_t g = 0; g < N; ++g) {
    int32_t at = tcr[g];
    for (int b = 0; b < B; ++b) {
      const int32_t n = starts[static_cast<size_t>(b) * N + g];
      starts[static_cast<size_t>(b) * N + g] = at;
      at += n;
    }
    tcr[g + 1] = at;
  }
#pragma omp parallel for num_threads(B)
  for (int b = 0; b < B; ++b) {
    int32_t* tcursor = starts.data() + static_cast<size_t>(b) * N;
    for (int64_t r = block_row[b]; r < block_row[b + 1]; ++r) {
      for (int32_t k = cr[r]; k < cr[r + 1]; ++k) {
        const int32_t at = tcursor[c[k]]++;
        tc[at] = static_cast<int32_t>(r);
        tv[at] = v[k];
      }
    }
  }
}

// Forward compositing; with `sinks` (one per tile), also every nonzero weight of every pixel.
template <typename scalar_t>
void ForwardKernel(const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                   const scalar_t* features, const int32_t* expert_ids, int E, const int64_t* offsets,
                   const int64_t* flatten_ids, int D, int W, int H, int tiles_x, int tiles_y, int ts, scalar_t* out,
                   scalar_t* alpha_img, scalar_t* final_T, int32_t* last_img,
                   std::vector<WeightEntries<scalar_t>>* sinks = nullptr) {
  using Lim = Limits<scalar_t>;
  const int n_tiles = tiles_x * tiles_y;
  const int64_t HW = static_cast<int64_t>(H) * W;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    TileGaussians<scalar_t> tg;
    // Per expert and lane: feature accumulators [E][D][lanes] and the lane state [E][lanes].
    // Lane state is kept in scalar_t (masks as 0/1, list positions exactly representable)
    // so that the lane loops vectorise without mixed-width conversions.
    std::vector<scalar_t> acc(static_cast<size_t>(E) * D * kLanes), state(static_cast<size_t>(E) * 4 * kLanes);
    scalar_t* const T_all = state.data();
    scalar_t* const asum_all = T_all + E * kLanes;
    scalar_t* const active_all = asum_all + E * kLanes;
    scalar_t* const last_all = active_all + E * kLanes;
    std::vector<int> n_active(E);  // lanes of each expert still compositing
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int ox = (tile % tiles_x) * ts, oy = (tile / tiles_x) * ts;
      const int64_t start = offsets[tile];
      const int count = static_cast<int>(offsets[tile + 1] - start);
      tg.Load(means2d, conics, opacities, features, expert_ids, E, flatten_ids + start, count, D, ox, oy, ts);
      tg.BuildRows(E, ts);
      for (int r = 0; r < ts && oy + r < H; ++r) {
        const int y = oy + r;
        const scalar_t pyc = scalar_t(y) + scalar_t(0.5);
        const int* const rid = tg.row_ids.data() + tg.row_start[r];
        const char* const rlast = tg.row_last.data() + tg.row_start[r];
        const int rn = tg.row_start[r + 1] - tg.row_start[r];
        for (int c0 = 0; c0 < ts && ox + c0 < W; c0 += kLanes) {
          const int x0 = ox + c0;
          const int nl = std::min({kLanes, ts - c0, W - x0});
          scalar_t px[kLanes], w[kLanes];
          for (int l = 0; l < kLanes; ++l) {
            px[l] = scalar_t(x0 + l) + scalar_t(0.5);
          }
          for (int e = 0; e < E; ++e) {
            for (int l = 0; l < kLanes; ++l) {
              T_all[e * kLanes + l] = scalar_t(1);
              asum_all[e * kLanes + l] = scalar_t(0);
              active_all[e * kLanes + l] = l < nl ? scalar_t(1) : scalar_t(0);
              last_all[e * kLanes + l] = scalar_t(0);
            }
          }
          std::fill(acc.begin(), acc.end(), scalar_t(0));
          std::fill(n_active.begin(), n_active.end(), nl);
          // (expert, lane) pairs that may still take a contribution from this tile's list.
          int remaining = nl * tg.row_experts[r];
          for (int j = 0; j < rn && remaining > 0; ++j) {
            const int i = rid[j];
            const int e = tg.eid[i];
            scalar_t* const T = T_all + e * kLanes;
            scalar_t* const active = active_all + e * kLanes;
            if (n_active[e] > 0) {  // Gaussians of an expert whose lanes have all stopped cost nothing
              scalar_t* const asum = asum_all + e * kLanes;
              scalar_t* const last = last_all + e * kLanes;
              const scalar_t gx = tg.mx[i], o = tg.op[i];
              const scalar_t dy = pyc - tg.my[i];
              // power = -0.5 (a dx^2 + c dy^2) - b dx dy with the row's dy terms hoisted.
              const scalar_t ha = scalar_t(-0.5) * tg.ca[i], bdy = tg.cb[i] * dy,
                             cdy = scalar_t(-0.5) * tg.cc[i] * dy * dy;
              const scalar_t pos = scalar_t(i + 1);
              scalar_t n_stop = 0;
#pragma omp simd reduction(+ : n_stop)
              for (int l = 0; l < kLanes; ++l) {
                const scalar_t dx = px[l] - gx;
                const scalar_t power = ha * dx * dx + cdy - bdy * dx;
                const scalar_t og = o * ExpNonPositive(std::min(power, scalar_t(0)));
                const scalar_t alpha = std::min(Lim::kAlphaMax, og);
                // min(0.99, og) >= 1/255 tested as og >= 1/255 (equivalent; lets gcc vectorise).
                const bool ok = (active[l] != scalar_t(0)) & (power <= scalar_t(0)) & (og >= Lim::kAlphaMin);
                const scalar_t test_T = T[l] * (scalar_t(1) - alpha);
                const bool stop = ok & (test_T < Lim::kTMin);
                const bool use = ok & !stop;
                w[l] = use ? alpha * T[l] : scalar_t(0);
                asum[l] += w[l];
                T[l] = use ? test_T : T[l];
                last[l] = use ? pos : last[l];
                active[l] = stop ? scalar_t(0) : active[l];
                n_stop += stop ? scalar_t(1) : scalar_t(0);
              }
              const scalar_t* f = tg.feat.data() + static_cast<size_t>(i) * D;
              scalar_t* const acc_e = acc.data() + static_cast<size_t>(e) * D * kLanes;
              for (int d = 0; d < D; ++d) {
                const scalar_t fd = f[d];
                scalar_t* ad = acc_e + d * kLanes;
#pragma omp simd
                for (int l = 0; l < kLanes; ++l) {
                  ad[l] += w[l] * fd;
                }
              }
              if (sinks) {
                WeightEntries<scalar_t>& sink = (*sinks)[tile];
                const int32_t g = static_cast<int32_t>(flatten_ids[start + i]);
                const int32_t row0 = static_cast<int32_t>(e * HW + static_cast<int64_t>(y) * W + x0);
                for (int l = 0; l < nl; ++l) {
                  if (w[l] != scalar_t(0)) {
                    sink.push_back({row0 + l, g, w[l]});
                  }
                }
              }
              n_active[e] -= static_cast<int>(n_stop);
              remaining -= static_cast<int>(n_stop);
            }
            if (rlast[j]) {  // expert e has nothing left in this row: its active lanes are done
              remaining -= n_active[e];
              n_active[e] = 0;
            }
          }
          for (int e = 0; e < E; ++e) {
            for (int l = 0; l < nl; ++l) {
              const int64_t pix = e * HW + static_cast<int64_t>(y) * W + x0 + l;
              for (int d = 0; d < D; ++d) {
                out[pix * D + d] = acc[(static_cast<size_t>(e) * D + d) * kLanes + l];
              }
              alpha_img[pix] = asum_all[e * kLanes + l];
              final_T[pix] = T_all[e * kLanes + l];
              last_img[pix] = static_cast<int32_t>(last_all[e * kLanes + l]);
            }
          }
        }
      }
    }
  }
}

// Pair gradient layout: [mean x, mean y, conic a, conic b, conic c, opacity, features...].
constexpr int kPairFixed = 6;

template <typename scalar_t>
void BackwardKernel(const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                    const scalar_t* features, const int32_t* expert_ids, int E, const int64_t* offsets,
                    const int64_t* flatten_ids, const scalar_t* final_T, const int32_t* last_img,
                    const scalar_t* grad_out, const scalar_t* grad_alpha, int D, int W, int H, int tiles_x,
                    int tiles_y, int ts, scalar_t* pair_grads) {
  using Lim = Limits<scalar_t>;
  const int n_tiles = tiles_x * tiles_y;
  const int K = kPairFixed + D;
  const int64_t HW = static_cast<int64_t>(H) * W;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    TileGaussians<scalar_t> tg;
    // Per expert and lane: upstream gradient, running "colour behind" (accum) and the
    // features of the previously visited (next in front-to-back order) Gaussian [E][D][lanes];
    // transmittance, alpha-image gradient and its running accumulators, last position [E][lanes].
    const size_t EDL = static_cast<size_t>(E) * D * kLanes;
    std::vector<scalar_t> g_out_all(EDL), accum_all(EDL), last_f_all(EDL), state(static_cast<size_t>(E) * 5 * kLanes);
    scalar_t* const T_all = state.data();
    scalar_t* const g_a_all = T_all + E * kLanes;
    scalar_t* const accum_a_all = g_a_all + E * kLanes;
    scalar_t* const last_alpha_all = accum_a_all + E * kLanes;
    scalar_t* const last_all = last_alpha_all + E * kLanes;
    std::vector<int> max_last_e(E);  // per expert: the largest `last` of the row's lanes
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int ox = (tile % tiles_x) * ts, oy = (tile / tiles_x) * ts;
      const int64_t start = offsets[tile];
      const int count = static_cast<int>(offsets[tile + 1] - start);
      if (count == 0) {
        continue;
      }
      tg.Load(means2d, conics, opacities, features, expert_ids, E, flatten_ids + start, count, D, ox, oy, ts);
      tg.BuildRows(E, ts);
      scalar_t* tile_grads = pair_grads + start * K;
      for (int r = 0; r < ts && oy + r < H; ++r) {
        const int y = oy + r;
        const scalar_t pyc = scalar_t(y) + scalar_t(0.5);
        const int* const rid = tg.row_ids.data() + tg.row_start[r];
        const int rn = tg.row_start[r + 1] - tg.row_start[r];
        for (int c0 = 0; c0 < ts && ox + c0 < W; c0 += kLanes) {
          const int x0 = ox + c0;
          const int nl = std::min({kLanes, ts - c0, W - x0});
          scalar_t px[kLanes], ok_v[kLanes], alpha_v[kLanes], g_v[kLanes], w[kLanes], dl_dalpha[kLanes];
          for (int l = 0; l < kLanes; ++l) {
            px[l] = scalar_t(x0 + l) + scalar_t(0.5);
          }
          for (int e = 0; e < E; ++e) {
            max_last_e[e] = 0;
            for (int l = 0; l < kLanes; ++l) {
              const bool in = l < nl;
              const int64_t pix = e * HW + static_cast<int64_t>(y) * W + x0 + (in ? l : 0);
              const int el = e * kLanes + l;
              T_all[el] = in ? final_T[pix] : scalar_t(1);
              last_all[el] = in ? scalar_t(last_img[pix]) : scalar_t(0);
              g_a_all[el] = in ? grad_alpha[pix] : scalar_t(0);
              accum_a_all[el] = scalar_t(0);
              last_alpha_all[el] = scalar_t(0);
              for (int d = 0; d < D; ++d) {
                const size_t edl = (static_cast<size_t>(e) * D + d) * kLanes + l;
                g_out_all[edl] = in ? grad_out[pix * D + d] : scalar_t(0);
                accum_all[edl] = scalar_t(0);
                last_f_all[edl] = scalar_t(0);
              }
              max_last_e[e] = std::max(max_last_e[e], in ? last_img[pix] : 0);
            }
          }
          for (int j = rn - 1; j >= 0; --j) {  // the row's Gaussians, back to front
            const int i = rid[j];
            const int e = tg.eid[i];
            if (i >= max_last_e[e]) {  // behind every lane of its expert
              continue;
            }
            scalar_t* const T = T_all + e * kLanes;
            scalar_t* const accum_a = accum_a_all + e * kLanes;
            scalar_t* const last_alpha = last_alpha_all + e * kLanes;
            const scalar_t* const g_a = g_a_all + e * kLanes;
            const scalar_t* const last = last_all + e * kLanes;
            const scalar_t gx = tg.mx[i], a = tg.ca[i], b = tg.cb[i], c = tg.cc[i], o = tg.op[i];
            const scalar_t dy = pyc - tg.my[i];
            const scalar_t ha = scalar_t(-0.5) * a, bdy = b * dy, cdy = scalar_t(-0.5) * c * dy * dy;
            const scalar_t pos = scalar_t(i);
            scalar_t g_mx = 0, g_my = 0, g_a_con = 0, g_b_con = 0, g_c_con = 0, g_op = 0;
            scalar_t n_ok = 0;
#pragma omp simd reduction(+ : n_ok)
            for (int l = 0; l < kLanes; ++l) {
              const scalar_t dx = px[l] - gx;
              const scalar_t power = ha * dx * dx + cdy - bdy * dx;
              const scalar_t G = ExpNonPositive(std::min(power, scalar_t(0)));
              const scalar_t og = o * G;
              const scalar_t alpha = std::min(Lim::kAlphaMax, og);
              const bool ok = (pos < last[l]) & (power <= scalar_t(0)) & (og >= Lim::kAlphaMin);
              T[l] = ok ? T[l] / (scalar_t(1) - alpha) : T[l];  // transmittance in front of Gaussian i
              ok_v[l] = ok ? scalar_t(1) : scalar_t(0);
              alpha_v[l] = alpha;
              g_v[l] = G;
              w[l] = ok ? alpha * T[l] : scalar_t(0);
              // The alpha image is the composite of a constant feature 1.
              accum_a[l] = ok ? last_alpha[l] + (scalar_t(1) - last_alpha[l]) * accum_a[l] : accum_a[l];
              dl_dalpha[l] = ok ? (scalar_t(1) - accum_a[l]) * g_a[l] : scalar_t(0);
              n_ok += ok_v[l];
            }
            if (n_ok == scalar_t(0)) {
              continue;
            }
            const scalar_t* f = tg.feat.data() + static_cast<size_t>(i) * D;
            scalar_t* pg = tile_grads + static_cast<int64_t>(i) * K;
            const size_t e_off = static_cast<size_t>(e) * D * kLanes;
            for (int d = 0; d < D; ++d) {
              const scalar_t fd = f[d];
              scalar_t* acc_d = accum_all.data() + e_off + d * kLanes;
              scalar_t* lf_d = last_f_all.data() + e_off + d * kLanes;
              const scalar_t* go_d = g_out_all.data() + e_off + d * kLanes;
              scalar_t g_f = 0;
#pragma omp simd reduction(+ : g_f)
              for (int l = 0; l < kLanes; ++l) {
                const bool ok = ok_v[l] != scalar_t(0);
                acc_d[l] = ok ? last_alpha[l] * lf_d[l] + (scalar_t(1) - last_alpha[l]) * acc_d[l] : acc_d[l];
                lf_d[l] = ok ? fd : lf_d[l];
                dl_dalpha[l] += ok ? (fd - acc_d[l]) * go_d[l] : scalar_t(0);
                g_f += w[l] * go_d[l];
              }
              pg[kPairFixed + d] += g_f;
            }
#pragma omp simd reduction(+ : g_mx, g_my, g_a_con, g_b_con, g_c_con, g_op)
            for (int l = 0; l < kLanes; ++l) {
              const bool ok = ok_v[l] != scalar_t(0);
              const scalar_t dx = px[l] - gx, G = g_v[l];
              const scalar_t dl_da = dl_dalpha[l] * T[l];
              last_alpha[l] = ok ? alpha_v[l] : last_alpha[l];
              // alpha = min(0.99, o G): no gradient through the clamp.
              const bool pass = ok & (o * G <= Lim::kAlphaMax);
              const scalar_t dl_dpower = pass ? o * G * dl_da : scalar_t(0);
              g_op += pass ? G * dl_da : scalar_t(0);
              g_mx += dl_dpower * (a * dx + b * dy);
              g_my += dl_dpower * (b * dx + c * dy);
              g_a_con += scalar_t(-0.5) * dx * dx * dl_dpower;
              g_b_con += -dx * dy * dl_dpower;
              g_c_con += scalar_t(-0.5) * dy * dy * dl_dpower;
            }
            pg[0] += g_mx;
            pg[1] += g_my;
            pg[2] += g_a_con;
            pg[3] += g_b_con;
            pg[4] += g_c_con;
            pg[5] += g_op;
          }
        }
      }
    }
  }
}

}  // namespace

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
    int64_t tile_size) {
  const int64_t D = features.size(1), E = num_experts;
  // The kernel writes every pixel of every output (a tile without Gaussians writes the empty values).
  auto out = at::empty({E, height, width, D}, features.options());
  auto alpha = at::empty({E, height, width}, features.options());
  auto final_T = at::empty({E, height, width}, features.options());
  auto last = at::empty({E, height, width}, features.options().dtype(at::kInt));
  const int32_t* eids = expert_ids.numel() ? expert_ids.data_ptr<int32_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "composite_forward_cpu", [&] {
    ForwardKernel<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), eids,
                            static_cast<int>(E), offsets.data_ptr<int64_t>(), flatten_ids.data_ptr<int64_t>(),
                            static_cast<int>(D), static_cast<int>(width), static_cast<int>(height),
                            static_cast<int>(tiles_x), static_cast<int>(tiles_y), static_cast<int>(tile_size),
                            out.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), final_T.data_ptr<scalar_t>(),
                            last.data_ptr<int32_t>());
  });
  return {out, alpha, final_T, last};
}

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
    int64_t tile_size) {
  const int64_t E = num_experts, R = E * height * width, N = means2d.size(0);
  TORCH_CHECK(R < (int64_t(1) << 31), "too many pixels for int32 weight rows: ", R);
  auto features = at::zeros({N, 1}, means2d.options());
  auto out = at::zeros({E, height, width, 1}, means2d.options());
  auto alpha = at::zeros({E, height, width}, means2d.options());
  auto final_T = at::ones({E, height, width}, means2d.options());
  auto last = at::zeros({E, height, width}, means2d.options().dtype(at::kInt));
  const int32_t* eids = expert_ids.numel() ? expert_ids.data_ptr<int32_t>() : nullptr;
  const auto index = means2d.options().dtype(at::kInt);
  auto crow = at::zeros({R + 1}, index), tcrow = at::zeros({N + 1}, index);
  at::Tensor col, val, tcol, tval;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_weights_cpu", [&] {
    std::vector<WeightEntries<scalar_t>> sinks(tiles_x * tiles_y);
    ForwardKernel<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), eids,
                            static_cast<int>(E), offsets.data_ptr<int64_t>(), flatten_ids.data_ptr<int64_t>(), 1,
                            static_cast<int>(width), static_cast<int>(height), static_cast<int>(tiles_x),
                            static_cast<int>(tiles_y), static_cast<int>(tile_size), out.data_ptr<scalar_t>(),
                            alpha.data_ptr<scalar_t>(), final_T.data_ptr<scalar_t>(), last.data_ptr<int32_t>(),
                            &sinks);
    int64_t nnz = 0;
    for (const auto& sink : sinks) {
      nnz += static_cast<int64_t>(sink.size());
    }
    TORCH_CHECK(nnz < (int64_t(1) << 31), "too many compositing weights for int32 indices: ", nnz);
    col = at::empty({nnz}, index);
    val = at::empty({nnz}, means2d.options());
    tcol = at::empty({nnz}, index);
    tval = at::empty({nnz}, means2d.options());
    WeightsToCsr<scalar_t>(sinks, R, N, nnz, crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), val.data_ptr<scalar_t>(),
                           tcrow.data_ptr<int32_t>(), tcol.data_ptr<int32_t>(), tval.data_ptr<scalar_t>());
  });
  return {crow, col, val, tcrow, tcol, tval};
}

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
    int64_t tile_size) {
  const int64_t N = means2d.size(0), D = features.size(1), M = flatten_ids.size(0);
  const int64_t K = kPairFixed + D;
  auto pair_grads = at::zeros({M, K}, features.options());
  auto g_means = at::zeros({N, 2}, features.options());
  auto g_conics = at::zeros({N, 3}, features.options());
  auto g_opac = at::zeros({N}, features.options());
  auto g_feat = at::zeros({N, D}, features.options());
  const int32_t* eids = expert_ids.numel() ? expert_ids.data_ptr<int32_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "composite_backward_cpu", [&] {
    BackwardKernel<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                             opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), eids,
                             static_cast<int>(num_experts), offsets.data_ptr<int64_t>(),
                             flatten_ids.data_ptr<int64_t>(), final_T.data_ptr<scalar_t>(), last.data_ptr<int32_t>(),
                             grad_features_img.data_ptr<scalar_t>(), grad_alpha_img.data_ptr<scalar_t>(),
                             static_cast<int>(D), static_cast<int>(width), static_cast<int>(height),
                             static_cast<int>(tiles_x), static_cast<int>(tiles_y), static_cast<int>(tile_size),
                             pair_grads.data_ptr<scalar_t>());
    // Fixed-order reduction of the pair gradients onto their Gaussians.
    const scalar_t* pg = pair_grads.data_ptr<scalar_t>();
    const int64_t* ids = flatten_ids.data_ptr<int64_t>();
    scalar_t* gm = g_means.data_ptr<scalar_t>();
    scalar_t* gc = g_conics.data_ptr<scalar_t>();
    scalar_t* go = g_opac.data_ptr<scalar_t>();
    scalar_t* gf = g_feat.data_ptr<scalar_t>();
    for (int64_t p = 0; p < M; ++p) {
      const int64_t g = ids[p];
      const scalar_t* row = pg + p * K;
      gm[2 * g] += row[0];
      gm[2 * g + 1] += row[1];
      gc[3 * g] += row[2];
      gc[3 * g + 1] += row[3];
      gc[3 * g + 2] += row[4];
      go[g] += row[5];
      for (int64_t d = 0; d < D; ++d) {
        gf[g * D + d] += row[kPairFixed + d];
      }
    }
  });
  return {g_means, g_conics, g_opac, g_feat};
}
