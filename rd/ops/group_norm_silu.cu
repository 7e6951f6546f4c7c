// Fused GroupNorm + time-embedding scale/shift + SiLU: forward and backward kernels.  Spec: rd/ops/reference.py
//
//   y = SiLU(h),   h = (x − μ_g)·a_nc + b_nc,   a_nc = rstd_g·γ_c·(1 + s_nc),   b_nc = β_c·(1 + s_nc) + shift_nc
//
// x, y, dy, dx are float32/float16/bfloat16 in NCHW or NHWC (channels_last) memory; all math is float32.
// Two paths. Single-pass (sm_90+, NHWC with 16-byte vectors, H·W ≤ 64, a sample that fits on chip): one cluster of
// S ∈ {1, 2, 4, 8, 16} blocks per sample, block r of it holding positions [r·chunk, (r + 1)·chunk) (chunk = ⌈H·W/S⌉)
// of x (and dy) in shared memory, read from DRAM once; per-group sums are exchanged through distributed shared memory.
// (On larger maps it ran at 0.80–0.90× the multi-pass kernels' speed at 32×32 and 0.80–1.13× at 16×16 on an H100:
// their many blocks per SM overlap loads with arithmetic, the cluster's phases do not.)
// forward   sums Σx → cluster → μ_g;  Σ(x − μ_g)² over the slab → cluster → rstd_g;  y = SiLU((x − μ)·a + b)
// backward  A = Σ_hw dh, B' = Σ_hw dh·(x − μ) → cluster → dshift, dscale, dγ/dβ terms, Q, R (as finalize_grads);
//           dx = a·dh + Q·(x − μ) + R from the slabs
// S: the smallest whose block needs ≤ 64 KB of shared memory, else the largest that fits the opt-in limit, if the
// device can run its clusters (cudaOccupancyMaxActiveClusters); decided once per shape. RD_OPS_MULTIPASS=1 forces
// the multi-pass path, RD_OPS_DEBUG=1 prints each decision. Multi-pass (everything else, 3 kernels each way):
// forward   1 stats     Welford (mean, M2, count) per (n, split, c)  NCHW: one warp per (n, c) plane
//                                                                  NHWC: blocks (n, split), threads (channel vector, row)
//           2 finalize  Chan-merge per (n, g) → μ, rstd; per-channel (μ, a, b)       one warp per (n, g)
//           3 apply     y = SiLU((x − μ)·a + b)                     NCHW: flat grid-stride; NHWC: tiles as in 1
// backward  1 reduce    A = Σ_hw dh,  B' = Σ_hw dh·(x − μ)  per (n, split, c),  dh = dy·SiLU'(h)
//           2 finalize  dshift = A, dscale = γ·B + β·A (B = rstd·B'), dγ/dβ terms; per group
//                       c1 = mean_g(k·dh), c2 = mean_g(k·dh·x̂) with k = γ(1 + s)
//           3 apply     dx = rstd·(k·dh − c1 − x̂·c2) = a·dh + Q·(x − μ) + R,   Q = −rstd²·c2,  R = −rstd·c1
// Vector loads of 16 bytes when the contiguous dimension (H·W for NCHW, C for NHWC) is a multiple of the vector
// width and the pointers are 16-byte aligned; one element at a time otherwise. Indices fit int32 (numel < 2³¹).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>

#include <cooperative_groups.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "group_norm_silu.h"

namespace {

constexpr int kBlock = 256;                // threads per block
constexpr int kWarps = kBlock / 32;        // planes / groups per block in the warp-per-item kernels
constexpr unsigned kFull = 0xffffffffu;

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack { T v[V]; };

template <int V, typename T>
__device__ __forceinline__ void load(const T* ptr, float (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(ptr);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = static_cast<float>(pk.v[j]);
}

template <int V, typename T>
__device__ __forceinline__ void store(T* ptr, const float (&in)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int j = 0; j < V; ++j) pk.v[j] = static_cast<T>(in[j]);
  *reinterpret_cast<Pack<T, V>*>(ptr) = pk;
}

// Chan et al.: merge the statistics (mean_b, m2_b, n_b) into (mean, m2, n); no E[x²] − E[x]² cancellation
__device__ __forceinline__ void merge(float& mean, float& m2, float& n, float mean_b, float m2_b, float n_b) {
  const float nn = n + n_b;
  if (nn == 0.f) return;
  const float d = mean_b - mean, w = n_b / nn;
  mean += d * w;
  m2 += m2_b + d * d * n * w;
  n = nn;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;                                // the same bits in every lane (a + b == b + a)
}

__device__ __forceinline__ void warp_merge(float& mean, float& m2, float& n) {
  for (int o = 16; o > 0; o >>= 1) {
    const float mb = __shfl_xor_sync(kFull, mean, o), qb = __shfl_xor_sync(kFull, m2, o);
    const float nb = __shfl_xor_sync(kFull, n, o);
    merge(mean, m2, n, mb, qb, nb);
  }
  mean = __shfl_sync(kFull, mean, 0);      // merge is not symmetric: take lane 0's result everywhere
  m2 = __shfl_sync(kFull, m2, 0);
  n = __shfl_sync(kFull, n, 0);
}

__device__ __forceinline__ float sigmoid(float h) { return 1.f / (1.f + __expf(-h)); }

// dL/dh = dy·SiLU'(h),  SiLU'(h) = σ(h)·(1 + h·(1 − σ(h)))
__device__ __forceinline__ float dsilu(float dy, float h) {
  const float sg = sigmoid(h);
  return dy * sg * (1.f + h * (1.f - sg));
}

struct Coef { float a, b, s1; };           // h = (x − μ)·a + b, s1 = 1 + scale

__device__ __forceinline__ Coef fold(const GnsParams& p, int n, int c, float r) {
  const int nc = n * p.C + c;
  const float s1 = p.scale ? 1.f + p.scale[nc] : 1.f;
  return {r * p.weight[c] * s1, p.bias[c] * s1 + (p.shift ? p.shift[nc] : 0.f), s1};
}

// Views into p.ws: partials (N, splits, C) and per-channel coefficients (N, C)
struct Work {
  int splits;                              // H·W splits per sample (1 for NCHW)
  float *p0, *p1, *p2;                     // Welford (mean, M2, count), or backward (A, B')
  float *cm, *ca, *cb, *cq, *cr;           // μ, a, b, and for the backward Q, R
};

Work make_work(const GnsParams& p, int splits) {
  const int64_t part = int64_t(p.N) * gns_max_splits(p) * p.C, nc = int64_t(p.N) * p.C;
  float* c = p.ws + 3 * part;
  return {splits, p.ws, p.ws + part, p.ws + 2 * part, c, c + nc, c + 2 * nc, c + 3 * nc, c + 4 * nc};
}

// channels_last tiles: thread (tx, ty) of block (n, split) takes channels [cv·V, cv·V + V) for cv = tx, tx + tx_count,
// ... and positions q0 + ty, q0 + ty + rows, ... of the split: consecutive threads read consecutive 16-byte vectors.
struct Tile { int tx_count, rows; };

Tile make_tile(int C, int V) {                 // (only used for NHWC, where V divides C; ≥ 1 for NCHW's C < V)
  const int tx = std::max(1, std::min(C / V, kBlock));
  return {tx, kBlock / tx};
}

// ---- forward -----------------------------------------------------------------------------------------------------

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) stats_nchw(const GnsParams p, const Work w) {
  const int lane = threadIdx.x % 32, nc = blockIdx.x * kWarps + threadIdx.x / 32;
  if (nc >= p.N * p.C) return;             // warp-uniform
  const T* x = static_cast<const T*>(p.x) + int64_t(nc) * p.HW;
  float cnt = 0.f, mean[V], m2[V];         // V interleaved Welford accumulators share one count
#pragma unroll
  for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0.f;
  for (int i = lane * V; i < p.HW; i += 32 * V) {
    float v[V];
    load<V>(x + i, v);
    cnt += 1.f;
    const float inv = 1.f / cnt;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = v[j] - mean[j];
      mean[j] += d * inv;
      m2[j] += d * (v[j] - mean[j]);
    }
  }
  float M = mean[0], Q = m2[0], K = cnt;
  for (int j = 1; j < V; ++j) merge(M, Q, K, mean[j], m2[j], cnt);
  warp_merge(M, Q, K);
  if (lane == 0) { w.p0[nc] = M; w.p1[nc] = Q; w.p2[nc] = K; }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) stats_nhwc(const GnsParams p, const Work w, const Tile t) {
  extern __shared__ float smem[];          // per thread: V means, V M2s, one count
  const int n = blockIdx.x, s = blockIdx.y, nt = t.tx_count * t.rows, cvs = p.C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int chunk = (p.HW + w.splits - 1) / w.splits, q0 = s * chunk, q1 = min(p.HW, q0 + chunk);
  float *sm_mean = smem, *sm_m2 = smem + nt * V, *sm_n = smem + 2 * nt * V;
  for (int base = 0; base < cvs; base += t.tx_count) {        // the same trip count in every thread (barriers)
    const int cv = base + tx;
    const bool valid = cv < cvs;
    float cnt = 0.f, mean[V], m2[V];
#pragma unroll
    for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0.f;
    if (valid) {
      const T* x = static_cast<const T*>(p.x) + (int64_t(n) * p.HW + q0 + ty) * p.C + cv * V;
      for (int q = q0 + ty; q < q1; q += t.rows, x += int64_t(t.rows) * p.C) {
        float v[V];
        load<V>(x, v);
        cnt += 1.f;
        const float inv = 1.f / cnt;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float d = v[j] - mean[j];
          mean[j] += d * inv;
          m2[j] += d * (v[j] - mean[j]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) { sm_mean[threadIdx.x * V + j] = mean[j]; sm_m2[threadIdx.x * V + j] = m2[j]; }
    sm_n[threadIdx.x] = cnt;
    __syncthreads();
    int st = 1;
    while (st < t.rows) st <<= 1;
    for (st >>= 1; st > 0; st >>= 1) {                        // tree over the rows (any row count)
      if (valid && ty < st && ty + st < t.rows) {
        const int o = threadIdx.x + st * t.tx_count;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          float nj = cnt;
          merge(mean[j], m2[j], nj, sm_mean[o * V + j], sm_m2[o * V + j], sm_n[o]);
          sm_mean[threadIdx.x * V + j] = mean[j];
          sm_m2[threadIdx.x * V + j] = m2[j];
        }
        cnt += sm_n[o];
        sm_n[threadIdx.x] = cnt;
      }
      __syncthreads();
    }
    if (valid && ty == 0) {
      const int idx = (n * w.splits + s) * p.C + cv * V;
#pragma unroll
      for (int j = 0; j < V; ++j) { w.p0[idx + j] = mean[j]; w.p1[idx + j] = m2[j]; w.p2[idx + j] = cnt; }
    }
    __syncthreads();                                          // shared memory is reused by the next chunk
  }
}

__global__ void __launch_bounds__(kBlock) finalize_stats(const GnsParams p, const Work w) {
  const int lane = threadIdx.x % 32, ng = blockIdx.x * kWarps + threadIdx.x / 32;
  if (ng >= p.N * p.G) return;             // warp-uniform
  const int n = ng / p.G, g = ng % p.G, cg = p.C / p.G;
  float M = 0.f, Q = 0.f, K = 0.f;
  for (int i = lane; i < cg * w.splits; i += 32) {           // the group's channels × splits
    const int idx = (n * w.splits + i / cg) * p.C + g * cg + i % cg;
    merge(M, Q, K, w.p0[idx], w.p1[idx], w.p2[idx]);
  }
  warp_merge(M, Q, K);
  const float r = rsqrtf(fmaxf(Q / K, 0.f) + p.eps);          // biased variance, as nn.GroupNorm
  if (lane == 0) { p.mean[ng] = M; p.rstd[ng] = r; }
  for (int c = g * cg + lane; c < (g + 1) * cg; c += 32) {
    const Coef k = fold(p, n, c, r);
    const int nc = n * p.C + c;
    w.cm[nc] = M; w.ca[nc] = k.a; w.cb[nc] = k.b;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) apply_nchw(const GnsParams p, const Work w) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int hw_v = p.HW / V;
  const int64_t total = int64_t(p.N) * p.C * hw_v;
  for (int64_t i = blockIdx.x * int64_t(kBlock) + threadIdx.x; i < total; i += int64_t(gridDim.x) * kBlock) {
    const int nc = static_cast<int>(i) / hw_v;
    const float m = w.cm[nc], a = w.ca[nc], b = w.cb[nc];
    float v[V];
    load<V>(x + i * V, v);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float h = (v[j] - m) * a + b;
      v[j] = h * sigmoid(h);
    }
    store<V>(y + i * V, v);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) apply_nhwc(const GnsParams p, const Work w, const Tile t, int splits) {
  const int n = blockIdx.x, s = blockIdx.y, cvs = p.C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int chunk = (p.HW + splits - 1) / splits, q0 = s * chunk, q1 = min(p.HW, q0 + chunk);
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], a[V], b[V];                                   // this thread's V channels, kept in registers
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int nc = n * p.C + cv * V + j;
      m[j] = w.cm[nc]; a[j] = w.ca[nc]; b[j] = w.cb[nc];
    }
    const int64_t start = (int64_t(n) * p.HW + q0 + ty) * p.C + cv * V, step = int64_t(t.rows) * p.C;
    const T* x = static_cast<const T*>(p.x) + start;
    T* y = static_cast<T*>(p.y) + start;
    for (int q = q0 + ty; q < q1; q += t.rows, x += step, y += step) {
      float v[V];
      load<V>(x, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float h = (v[j] - m[j]) * a[j] + b[j];
        v[j] = h * sigmoid(h);
      }
      store<V>(y, v);
    }
  }
}

// ---- backward ----------------------------------------------------------------------------------------------------

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) reduce_nchw(const GnsParams p, const Work w) {
  const int lane = threadIdx.x % 32, nc = blockIdx.x * kWarps + threadIdx.x / 32;
  if (nc >= p.N * p.C) return;             // warp-uniform
  const int n = nc / p.C, c = nc % p.C, ng = n * p.G + c / (p.C / p.G);
  const float m = p.mean[ng];
  const Coef k = fold(p, n, c, p.rstd[ng]);
  const T* x = static_cast<const T*>(p.x) + int64_t(nc) * p.HW;
  const T* dy = static_cast<const T*>(p.dy) + int64_t(nc) * p.HW;
  float A = 0.f, B = 0.f;
  for (int i = lane * V; i < p.HW; i += 32 * V) {
    float xv[V], gv[V];
    load<V>(x + i, xv);
    load<V>(dy + i, gv);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float xc = xv[j] - m, dh = dsilu(gv[j], xc * k.a + k.b);
      A += dh;
      B += dh * xc;
    }
  }
  A = warp_sum(A);
  B = warp_sum(B);
  if (lane == 0) { w.p0[nc] = A; w.p1[nc] = B; }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) reduce_nhwc(const GnsParams p, const Work w, const Tile t) {
  extern __shared__ float smem[];          // per thread: V sums A, V sums B'
  const int n = blockIdx.x, s = blockIdx.y, nt = t.tx_count * t.rows, cvs = p.C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int chunk = (p.HW + w.splits - 1) / w.splits, q0 = s * chunk, q1 = min(p.HW, q0 + chunk);
  float *sm_a = smem, *sm_b = smem + nt * V;
  for (int base = 0; base < cvs; base += t.tx_count) {        // the same trip count in every thread (barriers)
    const int cv = base + tx;
    const bool valid = cv < cvs;
    float A[V], B[V];
#pragma unroll
    for (int j = 0; j < V; ++j) A[j] = B[j] = 0.f;
    if (valid) {
      float m[V], a[V], b[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int c = cv * V + j, ng = n * p.G + c / (p.C / p.G);
        const Coef k = fold(p, n, c, p.rstd[ng]);
        m[j] = p.mean[ng]; a[j] = k.a; b[j] = k.b;
      }
      const int64_t start = (int64_t(n) * p.HW + q0 + ty) * p.C + cv * V, step = int64_t(t.rows) * p.C;
      const T* x = static_cast<const T*>(p.x) + start;
      const T* dy = static_cast<const T*>(p.dy) + start;
      for (int q = q0 + ty; q < q1; q += t.rows, x += step, dy += step) {
        float xv[V], gv[V];
        load<V>(x, xv);
        load<V>(dy, gv);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float xc = xv[j] - m[j], dh = dsilu(gv[j], xc * a[j] + b[j]);
          A[j] += dh;
          B[j] += dh * xc;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) { sm_a[threadIdx.x * V + j] = A[j]; sm_b[threadIdx.x * V + j] = B[j]; }
    __syncthreads();
    int st = 1;
    while (st < t.rows) st <<= 1;
    for (st >>= 1; st > 0; st >>= 1) {                        // tree over the rows (any row count)
      if (valid && ty < st && ty + st < t.rows) {
        const int o = threadIdx.x + st * t.tx_count;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          A[j] += sm_a[o * V + j];
          B[j] += sm_b[o * V + j];
          sm_a[threadIdx.x * V + j] = A[j];
          sm_b[threadIdx.x * V + j] = B[j];
        }
      }
      __syncthreads();
    }
    if (valid && ty == 0) {
      const int idx = (n * w.splits + s) * p.C + cv * V;
#pragma unroll
      for (int j = 0; j < V; ++j) { w.p0[idx + j] = A[j]; w.p1[idx + j] = B[j]; }
    }
    __syncthreads();                                          // shared memory is reused by the next chunk
  }
}

__global__ void __launch_bounds__(kBlock) finalize_grads(const GnsParams p, const Work w) {
  const int lane = threadIdx.x % 32, ng = blockIdx.x * kWarps + threadIdx.x / 32;
  if (ng >= p.N * p.G) return;             // warp-uniform
  const int n = ng / p.G, g = ng % p.G, cg = p.C / p.G;
  const float m = p.mean[ng], r = p.rstd[ng];
  float t1 = 0.f, t2 = 0.f;                                   // Σ_c k·A and Σ_c k·B over the group
  for (int c = g * cg + lane; c < (g + 1) * cg; c += 32) {
    float A = 0.f, B = 0.f;
    for (int s = 0; s < w.splits; ++s) {
      const int idx = (n * w.splits + s) * p.C + c;
      A += w.p0[idx];
      B += w.p1[idx];
    }
    B *= r;                                                   // Σ_hw dh·x̂
    const int nc = n * p.C + c;
    const float s1 = p.scale ? 1.f + p.scale[nc] : 1.f, k = p.weight[c] * s1;
    p.dshift[nc] = A;
    p.dscale[nc] = p.weight[c] * B + p.bias[c] * A;           // Σ dh·(x̂·γ + β)
    p.dgamma_part[nc] = s1 * B;
    p.dbeta_part[nc] = s1 * A;
    t1 += k * A;
    t2 += k * B;
  }
  t1 = warp_sum(t1);
  t2 = warp_sum(t2);
  const float inv_count = 1.f / (float(cg) * float(p.HW));
  const float Q = -r * r * t2 * inv_count, R = -r * t1 * inv_count;
  for (int c = g * cg + lane; c < (g + 1) * cg; c += 32) {
    const Coef k = fold(p, n, c, r);
    const int nc = n * p.C + c;
    w.cm[nc] = m; w.ca[nc] = k.a; w.cb[nc] = k.b; w.cq[nc] = Q; w.cr[nc] = R;
  }
}

// dx = a·dh + Q·(x − μ) + R for V values of one thread
template <int V>
__device__ __forceinline__ void grad_x(float (&xv)[V], const float (&gv)[V], const float* m, const float* a,
                                       const float* b, const float* q, const float* r) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float xc = xv[j] - m[j];
    xv[j] = a[j] * dsilu(gv[j], xc * a[j] + b[j]) + q[j] * xc + r[j];
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) apply_grad_nchw(const GnsParams p, const Work w) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const int hw_v = p.HW / V;
  const int64_t total = int64_t(p.N) * p.C * hw_v;
  for (int64_t i = blockIdx.x * int64_t(kBlock) + threadIdx.x; i < total; i += int64_t(gridDim.x) * kBlock) {
    const int nc = static_cast<int>(i) / hw_v;
    float m[V], a[V], b[V], q[V], r[V], xv[V], gv[V];
#pragma unroll
    for (int j = 0; j < V; ++j) { m[j] = w.cm[nc]; a[j] = w.ca[nc]; b[j] = w.cb[nc]; q[j] = w.cq[nc]; r[j] = w.cr[nc]; }
    load<V>(x + i * V, xv);
    load<V>(dy + i * V, gv);
    grad_x<V>(xv, gv, m, a, b, q, r);
    store<V>(dx + i * V, xv);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) apply_grad_nhwc(const GnsParams p, const Work w, const Tile t, int splits) {
  const int n = blockIdx.x, s = blockIdx.y, cvs = p.C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int chunk = (p.HW + splits - 1) / splits, q0 = s * chunk, q1 = min(p.HW, q0 + chunk);
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], a[V], b[V], q[V], r[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int nc = n * p.C + cv * V + j;
      m[j] = w.cm[nc]; a[j] = w.ca[nc]; b[j] = w.cb[nc]; q[j] = w.cq[nc]; r[j] = w.cr[nc];
    }
    const int64_t start = (int64_t(n) * p.HW + q0 + ty) * p.C + cv * V, step = int64_t(t.rows) * p.C;
    const T* x = static_cast<const T*>(p.x) + start;
    const T* dy = static_cast<const T*>(p.dy) + start;
    T* dx = static_cast<T*>(p.dx) + start;
    for (int qq = q0 + ty; qq < q1; qq += t.rows, x += step, dy += step, dx += step) {
      float xv[V], gv[V];
      load<V>(x, xv);
      load<V>(dy, gv);
      grad_x<V>(xv, gv, m, a, b, q, r);
      store<V>(dx, xv);
    }
  }
}

// ---- single pass: one thread-block cluster per sample (sm_90+, NHWC, 16-byte vectors) ----------------------------
//
// Block r of sample n's cluster holds positions [q0, q0 + nq) = [r·chunk, (r + 1)·chunk) ∩ [0, H·W) (nq = 0 for high
// ranks when H·W < S·chunk: such blocks still take part in every barrier). Its dynamic shared memory, from a
// 16-byte-aligned base: `slabs` slabs [chunk, C] of T (x; and dy for the backward), `slabs` arrays [rows, C] of float
// (per-thread sums, then summed over the rows in place into row 0), 4 arrays [G] of float. Thread (tx, ty) of the Tile
// touches the same slab vectors (i, cv) in every pass, i = ty, ty + rows, ... < nq, cv = tx, tx + tx_count, ... < C/V,
// so the slab needs no barrier between its writes and reads. Cross-block sums run over the ranks in order 0 … S − 1:
// every block gets the same bits, and no atomics.

namespace cg = cooperative_groups;

constexpr int kClusterMax = 16;            // non-portable above 8
constexpr size_t kSmemCompact = 64 * 1024; // a block this small leaves an SM room for ≥ 3 of them
constexpr int kClusterMaxHW = 64;          // larger maps: the multi-pass kernels were faster (H100, bf16, N = 512:
                                           // 0.80–0.90× at 32×32, mixed at 16×16, 1.16–1.90× at 8×8 and 4×4)

using ClusterKernel = void (*)(GnsParams, Tile, int);

size_t cluster_smem(const GnsParams& p, const Tile& t, size_t elem, int slabs, int chunk) {
  return slabs * (size_t(chunk) * p.C * elem + size_t(t.rows) * p.C * sizeof(float)) + 4 * size_t(p.G) * sizeof(float);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// 16 bytes global → shared without registers (cp.async, L1 bypassed); visible to this thread after copy_wait()
__device__ __forceinline__ void copy16(void* dst, const void* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(__cvta_generic_to_global(src)) : "memory");
}

__device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// a block's rows [0, nq) of [·, C] at src → dst (its shared slab): this thread's vectors, all copies in flight at once
template <typename T, int V>
__device__ __forceinline__ void copy_slab(T* dst, const T* src, int nq, int C, const Tile& t, int tx, int ty) {
  for (int cv = tx; cv < C / V; cv += t.tx_count)
    for (int i = ty; i < nq; i += t.rows) copy16(dst + i * C + cv * V, src + i * C + cv * V);
}

// red[c] = Σ_k red[k·C + c] over the rows k = 0 … rows − 1, in place (thread c alone touches column c)
__device__ __forceinline__ void sum_rows(float* red, int C, int rows) {
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float s = red[c];
    for (int k = 1; k < rows; ++k) s += red[k * C + c];
    red[c] = s;
  }
}

__device__ __forceinline__ float sum_group(const float* v, int g, int cpg) {
  float s = 0.f;
  for (int c = g * cpg; c < (g + 1) * cpg; ++c) s += v[c];
  return s;
}

// Σ over the cluster's blocks of v[i] in their shared memory, ranks in order
__device__ __forceinline__ float sum_ranks(float* v, int i, int S) {
  float s = 0.f;
  for (int k = 0; k < S; ++k) s += cg::this_cluster().map_shared_rank(v, k)[i];
  return s;
}

#endif

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) forward_cluster(const GnsParams p, const Tile t, int chunk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char shm[];
  const cg::cluster_group cluster = cg::this_cluster();
  const int S = static_cast<int>(cluster.num_blocks()), r = static_cast<int>(cluster.block_rank());
  const int n = blockIdx.x / S, C = p.C, G = p.G, cpg = C / G, cvs = C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int q0 = min(p.HW, r * chunk), nq = min(p.HW - q0, chunk);
  const int64_t base = (int64_t(n) * p.HW + q0) * C;                        // the block's first element of x and y
  T* slab = reinterpret_cast<T*>(shm);                                      // [nq, C] of x
  float* red = reinterpret_cast<float*>(shm + size_t(chunk) * C * sizeof(T));  // [rows, C]
  float *gsum = red + t.rows * C, *gsq = gsum + G, *gmu = gsq + G, *grs = gmu + G;  // [G] each
  const float count = float(cpg) * float(p.HW);

  // 1: x → shared memory (every copy independent, in flight at once), Σx per channel → per group of this block
  copy_slab<T, V>(slab, static_cast<const T*>(p.x) + base, nq, C, t, tx, ty);
  copy_wait();                             // this thread reads back only the vectors it copied itself
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float s[V];
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] = 0.f;
#pragma unroll 4
    for (int i = ty; i < nq; i += t.rows) {
      float v[V];
      load<V>(slab + i * C + cv * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) s[j] += v[j];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) red[ty * C + cv * V + j] = s[j];
  }
  __syncthreads();
  sum_rows(red, C, t.rows);
  __syncthreads();
  for (int g = threadIdx.x; g < G; g += blockDim.x) gsum[g] = sum_group(red, g, cpg);
  cluster.sync();                                                           // every gsum written
  for (int g = threadIdx.x; g < G; g += blockDim.x) gmu[g] = sum_ranks(gsum, g, S) / count;
  __syncthreads();

  // 2: Σ(x − μ_g)² per channel from the slab → per group; exact two-pass variance
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], s[V];
#pragma unroll
    for (int j = 0; j < V; ++j) { m[j] = gmu[(cv * V + j) / cpg]; s[j] = 0.f; }
    for (int i = ty; i < nq; i += t.rows) {
      float v[V];
      load<V>(slab + i * C + cv * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = v[j] - m[j];
        s[j] += d * d;
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) red[ty * C + cv * V + j] = s[j];
  }
  __syncthreads();
  sum_rows(red, C, t.rows);
  __syncthreads();
  for (int g = threadIdx.x; g < G; g += blockDim.x) gsq[g] = sum_group(red, g, cpg);
  cluster.sync();                                                           // every gsq written
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    const float rs = rsqrtf(sum_ranks(gsq, g, S) / count + p.eps);        // biased variance, as nn.GroupNorm
    grs[g] = rs;
    if (r == 0) { p.mean[n * G + g] = gmu[g]; p.rstd[n * G + g] = rs; }
  }
  __cluster_barrier_arrive();              // this thread has read the other blocks' shared memory for the last time
  __syncthreads();

  // 3: y = SiLU((x − μ)·a + b) from the slab
  T* y = static_cast<T*>(p.y) + base;
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], a[V], b[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = cv * V + j, g = c / cpg;
      const Coef k = fold(p, n, c, grs[g]);
      m[j] = gmu[g]; a[j] = k.a; b[j] = k.b;
    }
    for (int i = ty; i < nq; i += t.rows) {
      float v[V];
      load<V>(slab + i * C + cv * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float h = (v[j] - m[j]) * a[j] + b[j];
        v[j] = h * sigmoid(h);
      }
      store<V>(y + i * C + cv * V, v);
    }
  }
  __cluster_barrier_wait();                // no block exits while another may still read its shared memory
#endif
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock) backward_cluster(const GnsParams p, const Tile t, int chunk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char shm[];
  const cg::cluster_group cluster = cg::this_cluster();
  const int S = static_cast<int>(cluster.num_blocks()), r = static_cast<int>(cluster.block_rank());
  const int n = blockIdx.x / S, C = p.C, G = p.G, cpg = C / G, cvs = C / V;
  const int tx = threadIdx.x % t.tx_count, ty = threadIdx.x / t.tx_count;
  const int q0 = min(p.HW, r * chunk), nq = min(p.HW - q0, chunk);
  const int64_t base = (int64_t(n) * p.HW + q0) * C;                        // the block's first element of x, dy, dx
  T* xs = reinterpret_cast<T*>(shm);                                        // [nq, C] of x
  T* gs = xs + size_t(chunk) * C;                                           // [nq, C] of dy
  float* ra = reinterpret_cast<float*>(gs + size_t(chunk) * C);             // [rows, C]: Σ dh
  float* rb = ra + t.rows * C;                                              // [rows, C]: Σ dh·(x − μ)
  float *gt1 = rb + t.rows * C, *gt2 = gt1 + G, *gq = gt2 + G, *gr = gq + G;  // [G] each
  const float* mean = p.mean + n * G;
  const float* rstd = p.rstd + n * G;

  // 1: x, dy → shared memory, A = Σ dh and B' = Σ dh·(x − μ) per channel → per group Σ k·A, rstd·Σ k·B'
  copy_slab<T, V>(xs, static_cast<const T*>(p.x) + base, nq, C, t, tx, ty);
  copy_slab<T, V>(gs, static_cast<const T*>(p.dy) + base, nq, C, t, tx, ty);
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], a[V], b[V], A[V], B[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = cv * V + j, g = c / cpg;
      const Coef k = fold(p, n, c, rstd[g]);
      m[j] = mean[g]; a[j] = k.a; b[j] = k.b; A[j] = B[j] = 0.f;
    }
    copy_wait();                           // (after the loads above: they overlap the copies)
#pragma unroll 2
    for (int i = ty; i < nq; i += t.rows) {
      float xv[V], gv[V];
      load<V>(xs + i * C + cv * V, xv);
      load<V>(gs + i * C + cv * V, gv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float xc = xv[j] - m[j], dh = dsilu(gv[j], xc * a[j] + b[j]);
        A[j] += dh;
        B[j] += dh * xc;
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) { ra[ty * C + cv * V + j] = A[j]; rb[ty * C + cv * V + j] = B[j]; }
  }
  __syncthreads();
  sum_rows(ra, C, t.rows);
  sum_rows(rb, C, t.rows);
  __syncthreads();
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    float t1 = 0.f, t2 = 0.f;
    for (int c = g * cpg; c < (g + 1) * cpg; ++c) {
      const float k = p.weight[c] * (p.scale ? 1.f + p.scale[n * C + c] : 1.f);
      t1 += k * ra[c];
      t2 += k * rb[c];
    }
    gt1[g] = t1;
    gt2[g] = rstd[g] * t2;                                                // Σ k·B with B = rstd·B' = Σ dh·x̂
  }
  cluster.sync();                                                           // every ra, rb row 0 and gt1, gt2 written

  // 2: the per-channel gradients of channels [r·per, (r + 1)·per), as finalize_grads; Q, R per group
  const int per = (C + S - 1) / S, c_end = min(C, (r + 1) * per);
  for (int c = r * per + threadIdx.x; c < c_end; c += blockDim.x) {
    const float A = sum_ranks(ra, c, S), B = rstd[c / cpg] * sum_ranks(rb, c, S);
    const int nc = n * C + c;
    const float s1 = p.scale ? 1.f + p.scale[nc] : 1.f;
    p.dshift[nc] = A;
    p.dscale[nc] = p.weight[c] * B + p.bias[c] * A;                        // Σ dh·(x̂·γ + β)
    p.dgamma_part[nc] = s1 * B;
    p.dbeta_part[nc] = s1 * A;
  }
  const float inv_count = 1.f / (float(cpg) * float(p.HW));
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    const float t1 = sum_ranks(gt1, g, S), t2 = sum_ranks(gt2, g, S), rs = rstd[g];
    gq[g] = -rs * rs * t2 * inv_count;
    gr[g] = -rs * t1 * inv_count;
  }
  __cluster_barrier_arrive();              // this thread has read the other blocks' shared memory for the last time
  __syncthreads();

  // 3: dx = a·dh + Q·(x − μ) + R from the slabs
  T* dx = static_cast<T*>(p.dx) + base;
  for (int cv = tx; cv < cvs; cv += t.tx_count) {
    float m[V], a[V], b[V], q[V], rr[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = cv * V + j, g = c / cpg;
      const Coef k = fold(p, n, c, rstd[g]);
      m[j] = mean[g]; a[j] = k.a; b[j] = k.b; q[j] = gq[g]; rr[j] = gr[g];
    }
    for (int i = ty; i < nq; i += t.rows) {
      float xv[V], gv[V];
      load<V>(xs + i * C + cv * V, xv);
      load<V>(gs + i * C + cv * V, gv);
      grad_x<V>(xv, gv, m, a, b, q, rr);
      store<V>(dx + i * C + cv * V, xv);
    }
  }
  __cluster_barrier_wait();                // no block exits while another may still read its shared memory
#endif
}

// ---- launchers ---------------------------------------------------------------------------------------------------

// H·W splits per sample: ≈ 4 blocks per SM for the reductions (bounded by the workspace), 8 for the elementwise
// passes, and no more splits than leave each row of threads a position
int reduce_splits(const GnsParams& p, const Tile& t) {
  return std::max(1, std::min(gns_max_splits(p), ceil_div(p.HW, t.rows)));
}
int apply_splits(const GnsParams& p, const Tile& t) {
  return std::max(1, std::min(ceil_div(8 * p.num_sms, p.N), ceil_div(p.HW, t.rows)));
}
int flat_blocks(const GnsParams& p, int V) {                 // grid-stride loops: at most 8 blocks per SM
  return std::min(ceil_div(int64_t(p.N) * p.C * (p.HW / V), kBlock), 8 * p.num_sms);
}

template <typename T, int V>
void forward_v(const GnsParams& p, cudaStream_t stream) {
  const Tile t = make_tile(p.C, V);
  const Work w = make_work(p, p.nhwc ? reduce_splits(p, t) : 1);
  if (p.nhwc) {
    const size_t smem = sizeof(float) * t.tx_count * t.rows * (2 * V + 1);
    stats_nhwc<T, V><<<dim3(p.N, w.splits), t.tx_count * t.rows, smem, stream>>>(p, w, t);
  } else {
    stats_nchw<T, V><<<ceil_div(int64_t(p.N) * p.C, kWarps), kBlock, 0, stream>>>(p, w);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finalize_stats<<<ceil_div(int64_t(p.N) * p.G, kWarps), kBlock, 0, stream>>>(p, w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.nhwc) {
    const int splits = apply_splits(p, t);
    apply_nhwc<T, V><<<dim3(p.N, splits), t.tx_count * t.rows, 0, stream>>>(p, w, t, splits);
  } else {
    apply_nchw<T, V><<<flat_blocks(p, V), kBlock, 0, stream>>>(p, w);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int V>
void backward_v(const GnsParams& p, cudaStream_t stream) {
  const Tile t = make_tile(p.C, V);
  const Work w = make_work(p, p.nhwc ? reduce_splits(p, t) : 1);
  if (p.nhwc) {
    const size_t smem = sizeof(float) * t.tx_count * t.rows * (2 * V);
    reduce_nhwc<T, V><<<dim3(p.N, w.splits), t.tx_count * t.rows, smem, stream>>>(p, w, t);
  } else {
    reduce_nchw<T, V><<<ceil_div(int64_t(p.N) * p.C, kWarps), kBlock, 0, stream>>>(p, w);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finalize_grads<<<ceil_div(int64_t(p.N) * p.G, kWarps), kBlock, 0, stream>>>(p, w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.nhwc) {
    const int splits = apply_splits(p, t);
    apply_grad_nhwc<T, V><<<dim3(p.N, splits), t.tx_count * t.rows, 0, stream>>>(p, w, t, splits);
  } else {
    apply_grad_nchw<T, V><<<flat_blocks(p, V), kBlock, 0, stream>>>(p, w);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// 16-byte vectors when the contiguous dimension is a multiple of the width and every pointer is aligned
bool vectorizable(const GnsParams& p, int V, std::initializer_list<const void*> ptrs) {
  if ((p.nhwc ? p.C : p.HW) % V != 0) return false;
  for (const void* q : ptrs)
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;
  return true;
}

// ---- the single-pass path: decision and launch ----

bool env_flag(const char* name) {                            // set, and neither empty nor "0"
  const char* e = std::getenv(name);
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

bool multipass_forced() {
  static const bool forced = env_flag("RD_OPS_MULTIPASS");
  return forced;
}

cudaLaunchConfig_t cluster_config(const GnsParams& p, const Tile& t, int S, size_t smem, cudaLaunchAttribute* attr,
                                  cudaStream_t stream) {
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = S;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(S * p.N);
  cfg.blockDim = dim3(t.tx_count * t.rows);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Lets this thread query and configure the device while one of its streams captures a CUDA graph (a first call of
// a shape inside a capture): those calls are not stream work, but the default capture mode forbids them
struct RelaxedCapture {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&mode); }
  ~RelaxedCapture() { (void)cudaThreadExchangeStreamCaptureMode(&mode); }
};

// S for p's shape, 0 for the multi-pass path: the smallest S whose block needs ≤ 64 KB, else the largest one within
// the opt-in limit (less shared memory per block, more blocks per SM), the first that the device can schedule
int decide_cluster(ClusterKernel kernel, int dev, const GnsParams& p, size_t elem, int slabs, int V) {
  int major = 0, clusters_ok = 0, optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&clusters_ok, cudaDevAttrClusterLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (major < 9 || !clusters_ok) return 0;
  cudaFuncAttributes fa{};                                  // a build for < sm_90 (e.g. PTX JIT) has empty bodies
  if (cudaFuncGetAttributes(&fa, kernel) != cudaSuccess || fa.ptxVersion < 90 || fa.binaryVersion < 90) {
    (void)cudaGetLastError();                               // a failed query must not fail the next launch check
    return 0;
  }
  const size_t limit = size_t(optin) - fa.sharedSizeBytes;
  const bool sized = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)) ==
                     cudaSuccess;
  (void)cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  const bool s16 = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
  (void)cudaGetLastError();
  if (!sized) return 0;
  const Tile t = make_tile(p.C, V);
  auto need = [&](int S) { return cluster_smem(p, t, elem, slabs, ceil_div(p.HW, S)); };
  int order[10], k = 0;
  for (int S = 1; S <= kClusterMax; S *= 2)
    if (need(S) <= kSmemCompact) order[k++] = S;
  for (int S = kClusterMax; S >= 1; S /= 2)
    if (need(S) > kSmemCompact && need(S) <= limit) order[k++] = S;
  for (int i = 0; i < k; ++i) {
    const int S = order[i];
    if (S > 8 && !s16) continue;
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = cluster_config(p, t, S, need(S), &attr, nullptr);
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, kernel, &cfg) == cudaSuccess && active > 0) return S;
    (void)cudaGetLastError();
  }
  return 0;
}

// The decision for p, made once per (device, direction, dtype, C, H·W, G); 0 unless the single-pass path applies
template <typename T>
int cluster_size(const GnsParams& p, bool backward) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = backward ? vectorizable(p, V, {p.x, p.dy, p.dx}) : vectorizable(p, V, {p.x, p.y});
  if (!p.nhwc || !vec || multipass_forced() || p.HW > kClusterMaxHW) return 0;
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  using Key = std::tuple<int, bool, int, int, int>;
  static std::mutex mutex;
  static std::map<Key, int> decided;
  const Key key{dev, backward, p.C, p.HW, p.G};
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = decided.find(key);
  if (it != decided.end()) return it->second;
  const ClusterKernel kernel = backward ? backward_cluster<T, V> : forward_cluster<T, V>;
  int S = 0;
  {
    const RelaxedCapture relaxed;
    S = decide_cluster(kernel, dev, p, sizeof(T), backward ? 2 : 1, V);
  }
  decided.emplace(key, S);
  if (env_flag("RD_OPS_DEBUG")) {
    const Tile t = make_tile(p.C, V);
    if (S > 0)
      std::fprintf(stderr, "rd_ops: %s %d-byte C=%d HW=%d G=%d: cluster S=%d, %zu B shared memory per block\n",
                   backward ? "backward" : "forward", int(sizeof(T)), p.C, p.HW, p.G, S,
                   cluster_smem(p, t, sizeof(T), backward ? 2 : 1, ceil_div(p.HW, S)));
    else
      std::fprintf(stderr, "rd_ops: %s %d-byte C=%d HW=%d G=%d: multipass\n", backward ? "backward" : "forward",
                   int(sizeof(T)), p.C, p.HW, p.G);
  }
  return S;
}

template <typename T>
void launch_cluster(ClusterKernel kernel, const GnsParams& p, int S, int slabs, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const Tile t = make_tile(p.C, V);
  const int chunk = ceil_div(p.HW, S);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(p, t, S, cluster_smem(p, t, sizeof(T), slabs, chunk), &attr, stream);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p, t, chunk));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void forward_t(const GnsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (const int S = cluster_size<T>(p, false)) launch_cluster<T>(forward_cluster<T, V>, p, S, 1, stream);
  else if (vectorizable(p, V, {p.x, p.y})) forward_v<T, V>(p, stream);
  else forward_v<T, 1>(p, stream);
}

template <typename T>
void backward_t(const GnsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (const int S = cluster_size<T>(p, true)) launch_cluster<T>(backward_cluster<T, V>, p, S, 2, stream);
  else if (vectorizable(p, V, {p.x, p.dy, p.dx})) backward_v<T, V>(p, stream);
  else backward_v<T, 1>(p, stream);
}

}  // namespace

void gns_forward(const GnsParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case GnsDtype::kFloat: forward_t<float>(p, stream); break;
    case GnsDtype::kHalf: forward_t<c10::Half>(p, stream); break;
    case GnsDtype::kBFloat16: forward_t<c10::BFloat16>(p, stream); break;
  }
}

void gns_backward(const GnsParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case GnsDtype::kFloat: backward_t<float>(p, stream); break;
    case GnsDtype::kHalf: backward_t<c10::Half>(p, stream); break;
    case GnsDtype::kBFloat16: backward_t<c10::BFloat16>(p, stream); break;
  }
}

int gns_cluster_size(const GnsParams& p, bool backward) {
  switch (p.dtype) {
    case GnsDtype::kFloat: return cluster_size<float>(p, backward);
    case GnsDtype::kHalf: return cluster_size<c10::Half>(p, backward);
    case GnsDtype::kBFloat16: return cluster_size<c10::BFloat16>(p, backward);
  }
  return 0;
}
