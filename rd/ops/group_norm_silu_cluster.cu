// The single-pass path of the fused GroupNorm + scale/shift + SiLU (formulas: group_norm_silu.cu), built only when
// RD_OPS_CLUSTER=1 is set at build time (rd/ops/fused.py adds this file and -DRD_OPS_CLUSTER).
//
// sm_90+, NHWC with 16-byte vectors, H·W ≤ 64, a sample that fits on chip: one cluster of
// S ∈ {1, 2, 4, 8, 16} blocks per sample, block r of it holding positions [r·chunk, (r + 1)·chunk) (chunk = ⌈H·W/S⌉)
// of x (and dy) in shared memory, read from DRAM once; per-group sums are exchanged through distributed shared memory.
// (Larger maps stay on the multi-pass kernels: their many blocks per SM overlap loads with arithmetic, the cluster's
// phases do not; rd/ops/README.md has the measurements.)
// forward   sums Σx → cluster → μ_g;  Σ(x − μ_g)² over the slab → cluster → rstd_g;  y = SiLU((x − μ)·a + b)
// backward  A = Σ_hw dh, B' = Σ_hw dh·(x − μ) → cluster → dshift, dscale, dγ/dβ terms, Q, R (as finalize_grads);
//           dx = a·dh + Q·(x − μ) + R from the slabs
// S: the smallest whose block needs ≤ 64 KB of shared memory, else the largest that fits the opt-in limit, if the
// device can run its clusters (cudaOccupancyMaxActiveClusters); decided once per shape. RD_OPS_MULTIPASS=1 forces
// the multi-pass path, RD_OPS_DEBUG=1 prints each decision.
//
// Block r of sample n's cluster holds positions [q0, q0 + nq) = [r·chunk, (r + 1)·chunk) ∩ [0, H·W) (nq = 0 for high
// ranks when H·W < S·chunk: such blocks still take part in every barrier). Its dynamic shared memory, from a
// 16-byte-aligned base: `slabs` slabs [chunk, C] of T (x; and dy for the backward), `slabs` arrays [rows, C] of float
// (per-thread sums, then summed over the rows in place into row 0), 4 arrays [G] of float. Thread (tx, ty) of the Tile
// touches the same slab vectors (i, cv) in every pass, i = ty, ty + rows, ... < nq, cv = tx, tx + tx_count, ... < C/V,
// so the slab needs no barrier between its writes and reads. Cross-block sums run over the ranks in order 0 … S − 1:
// every block gets the same bits, and no atomics.
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

#include <cooperative_groups.h>

#include "group_norm_silu_common.cuh"

namespace {

using namespace gns;
namespace cg = cooperative_groups;

constexpr int kClusterMax = 16;            // non-portable above 8
constexpr size_t kSmemCompact = 64 * 1024; // a block this small leaves an SM room for ≥ 3 of them
constexpr int kClusterMaxHW = 64;          // larger maps take the multi-pass kernels (faster there: rd/ops/README.md)

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

// ---- decision and launch ---------------------------------------------------------------------------------------

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
bool forward_t(const GnsParams& p, cudaStream_t stream) {
  const int S = cluster_size<T>(p, false);
  if (S) launch_cluster<T>(forward_cluster<T, 16 / sizeof(T)>, p, S, 1, stream);
  return S > 0;
}

template <typename T>
bool backward_t(const GnsParams& p, cudaStream_t stream) {
  const int S = cluster_size<T>(p, true);
  if (S) launch_cluster<T>(backward_cluster<T, 16 / sizeof(T)>, p, S, 2, stream);
  return S > 0;
}

}  // namespace

bool gns_cluster_forward(const GnsParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case GnsDtype::kFloat: return forward_t<float>(p, stream);
    case GnsDtype::kHalf: return forward_t<c10::Half>(p, stream);
    case GnsDtype::kBFloat16: return forward_t<c10::BFloat16>(p, stream);
  }
  return false;
}

bool gns_cluster_backward(const GnsParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case GnsDtype::kFloat: return backward_t<float>(p, stream);
    case GnsDtype::kHalf: return backward_t<c10::Half>(p, stream);
    case GnsDtype::kBFloat16: return backward_t<c10::BFloat16>(p, stream);
  }
  return false;
}

int gns_cluster_size(const GnsParams& p, bool backward) {
  switch (p.dtype) {
    case GnsDtype::kFloat: return cluster_size<float>(p, backward);
    case GnsDtype::kHalf: return cluster_size<c10::Half>(p, backward);
    case GnsDtype::kBFloat16: return cluster_size<c10::BFloat16>(p, backward);
  }
  return 0;
}
