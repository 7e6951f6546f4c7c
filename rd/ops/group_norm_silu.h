// The parameters shared by the C++ binding (group_norm_silu.cpp: checks, allocation) and the kernels
// (group_norm_silu.cu). Plain pointers and ints, so the .cu file needs no ATen headers.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

enum class GnsDtype : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

struct GnsParams {
  GnsDtype dtype;                      // of x, y, dy, dx; everything else is float32
  bool nhwc;                           // channels_last memory (else NCHW-contiguous)
  int N, C, HW, G;                     // batch, channels, H·W, groups (C % G == 0)
  float eps;
  int num_sms;                         // multiprocessors of the device (sizes the grids)
  const void* x;                       // (N, C, H, W)
  const void* dy;                      // backward only
  void* y;                             // forward only
  void* dx;                            // backward only
  const float* weight;                 // γ (C)
  const float* bias;                   // β (C)
  const float* scale;                  // (N, C) or nullptr
  const float* shift;                  // (N, C) or nullptr
  float* mean;                         // μ (N, G): written by the forward, read by the backward
  float* rstd;                         // 1/√(var + eps) (N, G)
  float* ws;                           // workspace of gns_workspace_floats(p) floats
  float* dscale;                       // backward outputs (N, C) ...
  float* dshift;
  float* dgamma_part;                  // (N, C): per-sample terms of dγ, dβ; the binding sums them over N
  float* dbeta_part;
};

// Per-sample splits of H·W for the channels_last reductions (partial sums per split, merged per group).
inline int gns_max_splits(const GnsParams& p) {
  if (!p.nhwc) return 1;
  int s = (4 * p.num_sms + p.N - 1) / p.N;
  return s < p.HW ? s : p.HW;
}

// Partials: 3 arrays of N·splits·C floats; per-channel coefficients: 5 arrays of N·C floats.
inline int64_t gns_workspace_floats(const GnsParams& p) {
  return 3LL * p.N * gns_max_splits(p) * p.C + 5LL * p.N * p.C;
}

void gns_forward(const GnsParams& p, cudaStream_t stream);
void gns_backward(const GnsParams& p, cudaStream_t stream);
// The optional single-pass path (group_norm_silu_cluster.cu, compiled only with RD_OPS_CLUSTER=1; without it these
// return 0 / false). gns_cluster_size: the cluster size S that gns_forward/gns_backward (backward = true) take for p,
// 0 when they run the multi-pass kernels; decided once per device and shape (queries the device the first time).
// gns_cluster_forward/backward launch the single-pass kernels and return true when that path applies to p.
int gns_cluster_size(const GnsParams& p, bool backward);
bool gns_cluster_forward(const GnsParams& p, cudaStream_t stream);
bool gns_cluster_backward(const GnsParams& p, cudaStream_t stream);
