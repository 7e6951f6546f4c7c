"""Custom ops with a pure-PyTorch reference: the UNet's fused GroupNorm + time-embedding scale/shift + SiLU.

    y = group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift)   # impl from the default
    y = group_norm_silu(x, w, b, 32, impl="ref")      # the specification (rd/ops/reference.py)
    y = group_norm_silu(x, w, b, 32, impl="cuda")     # the kernel (rd/ops/group_norm_silu.cu); an error if unavailable
    set_default_impl("ref")                           # what impl=None means (initially "auto"): e.g. eager vs fused

impl="auto" runs the kernel for a 4-D float32/float16/bfloat16 CUDA x, else the reference. The kernel is compiled
on its first use (≈ 1 min, cached under build/rd_ops or RD_OPS_BUILD_DIR), never at import; if that fails, one
warning says why and the reference is used for the rest of the process. Under torch.compile the op stays in the
graph (torch.ops.rd.group_norm_silu, rd/ops/fused.py).
"""
import torch
from torch import Tensor

from .fused import build_failed, load_extension
from .reference import group_norm_silu_ref, stats_dtype

IMPLS = ("auto", "cuda", "ref")
_DEFAULT = {"impl": "auto"}


def set_default_impl(impl: str) -> str:
    """Make `impl` what impl=None means (the UNet's choice); returns the previous default."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    previous, _DEFAULT["impl"] = _DEFAULT["impl"], impl
    return previous


def get_default_impl() -> str:
    return _DEFAULT["impl"]


def kernel_supports(x: Tensor) -> bool:
    """Whether the CUDA kernel takes x: 4-D, on a GPU, float32/float16/bfloat16."""
    return x.is_cuda and x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


def group_norm_silu(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float = 1e-5,
                    scale: Tensor | None = None, shift: Tensor | None = None, impl: str | None = None) -> Tensor:
    """SiLU(((x − μ_g)·rstd_g·γ_c + β_c)·(1 + scale_nc) + shift_nc), x (N, C, H, W), scale/shift (N, C) or None.

    impl: "auto", "cuda", "ref", or None for the default (set_default_impl). The result has x's dtype on the
    kernel path (the reference follows autocast: float32 under bf16 autocast, like nn.GroupNorm).
    """
    impl = _DEFAULT["impl"] if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
    if impl == "cuda":
        if not kernel_supports(x):
            raise RuntimeError(f"impl='cuda' needs a 4-D float32/float16/bfloat16 CUDA tensor; got x of shape "
                               f"{tuple(x.shape)}, {x.dtype} on {x.device} (use impl='auto' or 'ref')")
        if not torch.compiler.is_compiling():               # no builds while tracing: the op builds at run time
            load_extension(strict=True)
    elif impl == "ref" or not kernel_supports(x) or build_failed():
        return group_norm_silu_ref(x, weight, bias, groups, eps, scale, shift)
    elif not torch.compiler.is_compiling() and load_extension() is None:
        return group_norm_silu_ref(x, weight, bias, groups, eps, scale, shift)
    # the kernel's parameters: float32, contiguous (autograd casts their gradients back to the inputs' dtypes)
    dt, c = stats_dtype(x), x.shape[1]
    weight = torch.ones(c, device=x.device, dtype=dt) if weight is None else weight.to(dt).contiguous()
    bias = torch.zeros(c, device=x.device, dtype=dt) if bias is None else bias.to(dt).contiguous()
    scale = None if scale is None else scale.to(dt).contiguous()
    shift = None if shift is None else shift.to(dt).contiguous()
    return torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, groups, float(eps))[0]


__all__ = ["IMPLS", "group_norm_silu", "group_norm_silu_ref", "set_default_impl", "get_default_impl",
           "kernel_supports", "load_extension", "build_failed"]
