// Fused GroupNorm + time-embedding scale/shift + SiLU: forward and backward kernels.  Spec: rd/ops/reference.py
//
//   y = SiLU(h),   h = (x − μ_g)·a_nc + b_nc,   a_nc = rstd_g·γ_c·(1 + s_nc),   b_nc = β_c·(1 + s_nc) + shift_nc
//
// x, y, dy, dx are float32/float16/bfloat16 in NCHW or NHWC (channels_last) memory; all math is float32.
// Three kernels each way (the multi-pass path; group_norm_silu_cluster.cu adds an optional single-pass one):
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
#include "group_norm_silu_common.cuh"

namespace {

using namespace gns;

constexpr int kWarps = kBlock / 32;        // planes / groups per block in the warp-per-item kernels
constexpr unsigned kFull = 0xffffffffu;

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

template <typename T>
void forward_t(const GnsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (vectorizable(p, V, {p.x, p.y})) forward_v<T, V>(p, stream);
  else forward_v<T, 1>(p, stream);
}

template <typename T>
void backward_t(const GnsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (vectorizable(p, V, {p.x, p.dy, p.dx})) backward_v<T, V>(p, stream);
  else backward_v<T, 1>(p, stream);
}

}  // namespace

void gns_forward(const GnsParams& p, cudaStream_t stream) {
  if (gns_cluster_forward(p, stream)) return;               // the single-pass path took it
  switch (p.dtype) {
    case GnsDtype::kFloat: forward_t<float>(p, stream); break;
    case GnsDtype::kHalf: forward_t<c10::Half>(p, stream); break;
    case GnsDtype::kBFloat16: forward_t<c10::BFloat16>(p, stream); break;
  }
}

void gns_backward(const GnsParams& p, cudaStream_t stream) {
  if (gns_cluster_backward(p, stream)) return;
  switch (p.dtype) {
    case GnsDtype::kFloat: backward_t<float>(p, stream); break;
    case GnsDtype::kHalf: backward_t<c10::Half>(p, stream); break;
    case GnsDtype::kBFloat16: backward_t<c10::BFloat16>(p, stream); break;
  }
}

#ifndef RD_OPS_CLUSTER                  // built without group_norm_silu_cluster.cu: always the multi-pass path
int gns_cluster_size(const GnsParams&, bool) { return 0; }
bool gns_cluster_forward(const GnsParams&, cudaStream_t) { return false; }
bool gns_cluster_backward(const GnsParams&, cudaStream_t) { return false; }
#endif
