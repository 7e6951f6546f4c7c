"""The fused CUDA kernel as a torch custom op: built on first use, with fake shapes and autograd for torch.compile.

    y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, groups, eps)
    dx, dweight, dbias, dscale, dshift = torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias,
                                                                                scale, shift, groups)

weight, bias (C,) and scale, shift (N, C) (or None) are float32 (float64 for a float64 x), contiguous; y and dx
have x's dtype and memory format (rd.ops.reference.memory_format). On a CUDA x the ops run the kernels of
group_norm_silu.cu; on a CPU x, or if the build failed, the PyTorch formulas of rd/ops/reference.py (same outputs),
so the registration itself (opcheck, torch.compile) is tested on any machine.
"""
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .reference import backward_formula, forward_with_stats, memory_format, stats_dtype

SOURCES = Path(__file__).resolve().parent
_STATE = {"ext": None, "error": None}      # the loaded extension, or why it could not be built


def cluster_build() -> bool:
    """RD_OPS_CLUSTER set (and not "0"): the build adds the single-pass kernels (group_norm_silu_cluster.cu, sm_90+)."""
    return os.environ.get("RD_OPS_CLUSTER", "") not in ("", "0")


def build_dir() -> Path:
    """RD_OPS_BUILD_DIR, else rd_ops/<python>-<torch>-<cuda>-sm<cc> under build/ of the clone (ignored by git), or
    under torch's extension folder (TORCH_EXTENSIONS_DIR, else torch's user cache) when rd is installed without its
    clone; + "-cluster" for a build with the single-pass kernels."""
    suffix = "-cluster" if cluster_build() else ""
    if os.environ.get("RD_OPS_BUILD_DIR"):
        return Path(os.environ["RD_OPS_BUILD_DIR"] + suffix)
    from torch.utils.cpp_extension import get_default_build_root
    major, minor = torch.cuda.get_device_capability()
    tag = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.split('+')[0]}"
           f"-cu{torch.version.cuda}-sm{major}{minor}")
    clone = SOURCES.parents[1]
    base = (clone / "build" if (clone / "pyproject.toml").is_file()
            else Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()))
    return base / "rd_ops" / (tag + suffix)


def _build():
    """torch.utils.cpp_extension.load of the sources, for this GPU's architecture only (≈ 1 min, then cached); with
    RD_OPS_CLUSTER=1 also the single-pass cluster kernels (a separate extension and build folder)."""
    from torch.utils.cpp_extension import load
    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    if torch.version.cuda is None:
        raise RuntimeError(f"this torch ({torch.__version__}) is not a CUDA build")
    arch_set = "TORCH_CUDA_ARCH_LIST" not in os.environ
    if arch_set:                                            # compile for the present GPU only (minutes saved)
        os.environ["TORCH_CUDA_ARCH_LIST"] = "{}.{}".format(*torch.cuda.get_device_capability())
    try:
        folder = build_dir()
        folder.mkdir(parents=True, exist_ok=True)
        sources = [SOURCES / "group_norm_silu.cpp", SOURCES / "group_norm_silu.cu"]
        name, flags = "rd_group_norm_silu", ["-O3"]
        if cluster_build():
            sources.append(SOURCES / "group_norm_silu_cluster.cu")
            name, flags = name + "_cluster", flags + ["-DRD_OPS_CLUSTER"]
        return load(name=name, sources=[str(s) for s in sources], build_directory=str(folder), extra_cflags=["-O3"],
                    extra_cuda_cflags=flags, verbose=False)
    finally:
        if arch_set:
            del os.environ["TORCH_CUDA_ARCH_LIST"]


def load_extension(strict: bool = False):
    """The compiled extension, built on the first call. A failed build warns once and returns None from then on
    (strict=True raises a RuntimeError with the reason instead)."""
    if _STATE["ext"] is None and _STATE["error"] is None:
        try:
            _STATE["ext"] = _build()
        except Exception as e:                              # any failure: no nvcc, compiler error, no GPU, ...
            _STATE["error"] = f"{type(e).__name__}: {str(e)[-3000:]}"
            warnings.warn(f"rd.ops: the fused GroupNorm+SiLU CUDA kernel could not be built ({_STATE['error']}); "
                          f"falling back to the PyTorch reference", stacklevel=2)
    if _STATE["ext"] is None and strict:
        raise RuntimeError(f"rd.ops: the CUDA kernel is unavailable: {_STATE['error']}")
    return _STATE["ext"]


def build_failed() -> bool:
    """True once a build was tried and failed (then impl='auto' uses the reference for the rest of the process)."""
    return _STATE["error"] is not None


# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op("rd::group_norm_silu", mutates_args=())
def group_norm_silu_op(x: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
                       groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, μ (N, G), rstd (N, G)) of y = SiLU(((x − μ)·rstd·γ + β)·(1 + scale) + shift)."""
    ext = load_extension() if x.is_cuda else None
    if ext is None:
        return forward_with_stats(x, weight, bias, scale, shift, groups, eps)
    return tuple(ext.forward(x, weight, bias, scale, shift, groups, eps))


@group_norm_silu_op.register_fake
def _(x, weight, bias, scale, shift, groups, eps):
    stats = x.new_empty((x.shape[0], groups), dtype=stats_dtype(x))
    return torch.empty_like(x, memory_format=memory_format(x)), stats, torch.empty_like(stats)


@torch.library.custom_op("rd::group_norm_silu_backward", mutates_args=())
def group_norm_silu_backward_op(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor,
                                scale: Optional[Tensor], shift: Optional[Tensor],
                                groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias, dscale, dshift); dscale, dshift (N, C) are returned even when scale, shift are None."""
    ext = load_extension() if x.is_cuda else None
    if ext is None:
        return backward_formula(dy, x, mean, rstd, weight, bias, scale, shift, groups)
    return tuple(ext.backward(dy, x, mean, rstd, weight, bias, scale, shift, groups))


@group_norm_silu_backward_op.register_fake
def _(dy, x, mean, rstd, weight, bias, scale, shift, groups):
    n, c = x.shape[:2]
    param = x.new_empty((c,), dtype=stats_dtype(x))
    per_sample = x.new_empty((n, c), dtype=stats_dtype(x))
    return (torch.empty_like(x, memory_format=memory_format(x)), param, torch.empty_like(param), per_sample,
            torch.empty_like(per_sample))


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, groups, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.groups = groups


def _backward(ctx, dy, _dmean, _drstd):
    """Gradients of x, weight, bias, scale, shift (None for absent ones); μ, rstd are statistics: not differentiated."""
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dw, db, ds, dsh = torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift,
                                                                ctx.groups)
    return dx, dw, db, (ds if scale is not None else None), (dsh if shift is not None else None), None, None


group_norm_silu_op.register_autograd(_backward, setup_context=_setup_context)
