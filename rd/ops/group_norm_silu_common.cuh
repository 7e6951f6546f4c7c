// Helpers shared by the multi-pass kernels (group_norm_silu.cu) and the optional single-pass cluster kernels
// (group_norm_silu_cluster.cu, built with RD_OPS_CLUSTER=1): 16-byte vector loads, SiLU and its derivative, the
// folded per-channel coefficients, the channels_last thread tiles.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "group_norm_silu.h"

namespace gns {

constexpr int kBlock = 256;                // threads per block

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

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

// channels_last tiles: thread (tx, ty) of block (n, split) takes channels [cv·V, cv·V + V) for cv = tx, tx + tx_count,
// ... and positions q0 + ty, q0 + ty + rows, ... of the split: consecutive threads read consecutive 16-byte vectors.
struct Tile { int tx_count, rows; };

inline Tile make_tile(int C, int V) {                 // (only used for NHWC, where V divides C; ≥ 1 for NCHW's C < V)
  const int tx = std::max(1, std::min(C / V, kBlock));
  return {tx, kBlock / tx};
}

// 16-byte vectors when the contiguous dimension is a multiple of the width and every pointer is aligned
inline bool vectorizable(const GnsParams& p, int V, std::initializer_list<const void*> ptrs) {
  if ((p.nhwc ? p.C : p.HW) % V != 0) return false;
  for (const void* q : ptrs)
    if (reinterpret_cast<uintptr_t>(q) % 16 != 0) return false;
  return true;
}

inline bool env_flag(const char* name) {                     // set, and neither empty nor "0"
  const char* e = std::getenv(name);
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

}  // namespace gns
