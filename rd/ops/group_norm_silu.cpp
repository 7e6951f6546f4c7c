// Python binding of the fused GroupNorm + SiLU kernels: checks the inputs, allocates outputs and workspace, launches.
// Called by the torch.library custom ops in rd/ops/fused.py; the kernels are in group_norm_silu.cu (and, built with
// RD_OPS_CLUSTER=1, group_norm_silu_cluster.cu).
#include <optional>
#include <tuple>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "group_norm_silu.h"

namespace {

// NHWC when x is channels_last and not also NCHW-contiguous (C = 1 or H·W = 1); anything else is made NCHW
bool is_nhwc(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// multiprocessors of x's device (sizes the grids); ATen/cuda/CUDAContext.h would need the cuSPARSE/cuBLAS headers
int num_sms(const at::Tensor& x) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, x.get_device()));
  return n;
}

at::MemoryFormat layout(bool nhwc) { return nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }

void check_float(const at::Tensor& t, const at::Tensor& x, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "rd::group_norm_silu: ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "rd::group_norm_silu: ", name,
              " must be float32 (rd.ops.group_norm_silu casts it); got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rd::group_norm_silu: ", name, " must have shape ", shape, "; got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "rd::group_norm_silu: ", name, " must be contiguous");
}

GnsParams make_params(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                      int64_t groups) {
  TORCH_CHECK(x.is_cuda(), "rd::group_norm_silu: the CUDA kernel needs a CUDA tensor; x is on ", x.device());
  TORCH_CHECK(x.dim() == 4, "rd::group_norm_silu: x must be (N, C, H, W); got shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "rd::group_norm_silu: x must be float32, float16 or bfloat16; got ", dt, " (use impl='ref')");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(groups > 0 && C % groups == 0, "rd::group_norm_silu: channels (", C,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(HW > 0, "rd::group_norm_silu: H·W must be > 0; got shape ", x.sizes());
  TORCH_CHECK(x.numel() < (int64_t(1) << 31), "rd::group_norm_silu: x has ", x.numel(),
              " elements; the kernels index with int32 (< 2^31): split the batch");
  check_float(weight, x, {C}, "weight");
  check_float(bias, x, {C}, "bias");
  if (scale) check_float(*scale, x, {N, C}, "scale");
  if (shift) check_float(*shift, x, {N, C}, "shift");
  GnsParams p{};
  p.dtype = dt == at::kFloat ? GnsDtype::kFloat : (dt == at::kHalf ? GnsDtype::kHalf : GnsDtype::kBFloat16);
  p.nhwc = is_nhwc(x);
  p.N = static_cast<int>(N);
  p.C = static_cast<int>(C);
  p.HW = static_cast<int>(HW);
  p.G = static_cast<int>(groups);
  p.num_sms = num_sms(x);
  p.weight = weight.data_ptr<float>();
  p.bias = bias.data_ptr<float>();
  p.scale = scale ? scale->data_ptr<float>() : nullptr;
  p.shift = shift ? shift->data_ptr<float>() : nullptr;
  return p;
}

}  // namespace

// (y, mean (N, G), rstd (N, G)); y has x's dtype and memory format
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(at::Tensor x, const at::Tensor& weight, const at::Tensor& bias,
                                                       const std::optional<at::Tensor>& scale,
                                                       const std::optional<at::Tensor>& shift, int64_t groups,
                                                       double eps) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  GnsParams p = make_params(x, weight, bias, scale, shift, groups);
  x = x.contiguous(layout(p.nhwc));                          // a no-op for NCHW and channels_last inputs
  auto y = at::empty(x.sizes(), x.options().memory_format(layout(p.nhwc)));
  auto mean = at::empty({x.size(0), groups}, x.options().dtype(at::kFloat));
  auto rstd = at::empty_like(mean);
  if (x.numel() == 0) return {y, mean, rstd};
  auto ws = at::empty({gns_workspace_floats(p)}, x.options().dtype(at::kFloat));
  p.eps = static_cast<float>(eps);
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.ws = ws.data_ptr<float>();
  gns_forward(p, c10::cuda::getCurrentCUDAStream().stream());
  return {y, mean, rstd};
}

// (dx, dweight, dbias, dscale, dshift); dx has x's dtype and memory format, the rest are float32
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    at::Tensor dy, at::Tensor x, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
    int64_t groups) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  GnsParams p = make_params(x, weight, bias, scale, shift, groups);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() && dy.device() == x.device(),
              "rd::group_norm_silu_backward: dy must match x in shape, dtype and device; got ", dy.sizes(), " ",
              dy.scalar_type(), " vs ", x.sizes(), " ", x.scalar_type());
  check_float(mean, x, {x.size(0), groups}, "mean");
  check_float(rstd, x, {x.size(0), groups}, "rstd");
  x = x.contiguous(layout(p.nhwc));
  dy = dy.contiguous(layout(p.nhwc));                        // a copy only if dy's layout differs from x's
  auto dx = at::empty(x.sizes(), x.options().memory_format(layout(p.nhwc)));
  auto f32 = x.options().dtype(at::kFloat);
  auto dscale = at::empty({x.size(0), x.size(1)}, f32), dshift = at::empty_like(dscale);
  auto dgamma_part = at::empty_like(dscale), dbeta_part = at::empty_like(dscale);
  if (x.numel() == 0) return {dx, at::zeros({x.size(1)}, f32), at::zeros({x.size(1)}, f32), dscale, dshift};
  auto ws = at::empty({gns_workspace_floats(p)}, f32);
  p.x = x.data_ptr();
  p.dy = dy.data_ptr();
  p.dx = dx.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.ws = ws.data_ptr<float>();
  p.dscale = dscale.data_ptr<float>();
  p.dshift = dshift.data_ptr<float>();
  p.dgamma_part = dgamma_part.data_ptr<float>();
  p.dbeta_part = dbeta_part.data_ptr<float>();
  gns_backward(p, c10::cuda::getCurrentCUDAStream().stream());
  return {dx, dgamma_part.sum(0), dbeta_part.sum(0), dscale, dshift};
}

// The path the kernels take for x: S of the single-pass cluster path, 0 for the multi-pass one (tests, benchmarks)
int64_t cluster_size(const at::Tensor& x, int64_t groups, bool backward) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const auto f32 = x.options().dtype(at::kFloat);
  const auto w = at::empty({x.size(1)}, f32);
  GnsParams p = make_params(x, w, w, std::nullopt, std::nullopt, groups);
  const auto xc = x.contiguous(layout(p.nhwc));
  void* ptr = xc.data_ptr();                                 // (the outputs the binding allocates are aligned)
  p.x = ptr;
  p.y = ptr;
  p.dy = ptr;
  p.dx = ptr;
  return gns_cluster_size(p, backward);
}

// The CUDA kernels of the ops rd/ops/fused.py defines (torch.library.custom_op, whose Python implementation stays
// the CPU / no-build path): registered here, the dispatcher calls them without a Python layer — in eager mode
// under the custom op's autograd, and from torch.compile'd graphs. Loading this library registers them.
namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_op(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias,
                                                          const std::optional<at::Tensor>& scale,
                                                          const std::optional<at::Tensor>& shift, int64_t groups,
                                                          double eps) {
  return forward(x, weight, bias, scale, shift, groups, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, const at::Tensor& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, int64_t groups) {
  return backward(dy, x, mean, rstd, weight, bias, scale, shift, groups);
}
}  // namespace

TORCH_LIBRARY_IMPL(rd, CUDA, m) {
  m.impl("group_norm_silu", TORCH_FN(forward_op));
  m.impl("group_norm_silu_backward", TORCH_FN(backward_op));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused GroupNorm + scale/shift + SiLU: (y, mean, rstd)");
  m.def("backward", &backward, "its backward: (dx, dweight, dbias, dscale, dshift)");
  m.def("cluster_size", &cluster_size, "S of the single-pass path for x (0: multi-pass)", pybind11::arg("x"),
        pybind11::arg("groups"), pybind11::arg("backward") = false);
}
