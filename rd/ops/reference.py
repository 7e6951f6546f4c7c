"""GroupNorm + time-embedding scale/shift + SiLU in plain PyTorch: the specification of rd.ops.group_norm_silu.

    y = SiLU(h),   h = ((x − μ_g)·rstd_g·γ_c + β_c)·(1 + scale_nc) + shift_nc,   rstd_g = 1/√(var_g + eps)

with μ_g, var_g (biased) over the C/G channels of group g and all H·W positions of one sample, as nn.GroupNorm.
`group_norm_silu_ref` is the specification (GroupNorm, scale and shift, SiLU as three PyTorch ops).
`forward_with_stats` and `backward_formula` are the same math written the way the CUDA kernel computes it —
statistics saved by the forward, a backward from per-channel sums — so the derivation is tested on the CPU
(tests/test_ops.py), and they run the custom op on the CPU and on a GPU whose kernel build failed.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def group_norm_silu_ref(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float = 1e-5,
                        scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    """SiLU((GroupNorm(x)·(1 + scale) + shift)), x (N, C, H, W), weight/bias (C,), scale/shift (N, C) or None."""
    h = F.group_norm(x, groups, weight, bias, eps)                    # fp32 under autocast, like nn.GroupNorm
    if scale is not None:
        h = h * (1 + scale[:, :, None, None])
    if shift is not None:
        h = h + shift[:, :, None, None]
    return F.silu(h)


def stats_dtype(x: Tensor) -> torch.dtype:
    """Statistics, parameters and their gradients are float32 (float64 for a float64 x)."""
    return torch.promote_types(x.dtype, torch.float32)


def memory_format(x: Tensor) -> torch.memory_format:
    """The op's output layout: channels_last for a channels_last x that is not also NCHW-contiguous, else NCHW."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _normalise(x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """x̂ = (x − μ_g)·rstd_g as (N, C, H·W) in the statistics dtype."""
    n, c = x.shape[:2]
    xg = x.to(mean.dtype).reshape(n, mean.shape[1], -1)                                # (N, G, C/G·H·W)
    return ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(n, c, -1)


def _affine(xhat: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """h = (x̂·γ + β)·(1 + scale) + shift on (N, C, H·W)."""
    h = xhat * weight[:, None] + bias[:, None]
    if scale is not None:
        h = h * (1 + scale[:, :, None])
    if shift is not None:
        h = h + shift[:, :, None]
    return h


def forward_with_stats(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None,
                       groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, μ (N, G), rstd (N, G)): the op's outputs; y in x's dtype and memory format."""
    n = x.shape[0]
    var, mean = torch.var_mean(x.to(stats_dtype(x)).reshape(n, groups, -1), dim=2, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    y = F.silu(_affine(_normalise(x, mean, rstd), weight, bias, scale, shift)).reshape(x.shape)
    return y.to(x.dtype).contiguous(memory_format=memory_format(x)), mean, rstd


def backward_formula(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, bias: Tensor,
                     scale: Tensor | None, shift: Tensor | None, groups: int) -> tuple[Tensor, ...]:
    """(dx, dγ, dβ, dscale, dshift) of L(y) given dy = ∂L/∂y: the formulas the CUDA backward implements.

    dh = dy·SiLU'(h), SiLU'(h) = σ(h)·(1 + h·(1 − σ(h)));  per (n, c): A = Σ_hw dh, B = Σ_hw dh·x̂
    dshift = A,  dscale = γ·B + β·A,  dγ = Σ_n (1 + s)·B,  dβ = Σ_n (1 + s)·A
    with g = ∂L/∂x̂ = dh·γ·(1 + s):  dx = rstd·(g − mean_g(g) − x̂·mean_g(g·x̂))   (means over a group)
    """
    # BEGIN ASSIGNMENT A4.1: the backward of GroupNorm + scale/shift + SiLU from the saved statistics (the formulas in the docstring) — see tutorials/04_fused_groupnorm.py
    n, c = x.shape[:2]
    xhat = _normalise(x, mean, rstd)                                                   # (N, C, HW)
    h = _affine(xhat, weight, bias, scale, shift)
    sig = torch.sigmoid(h)
    dh = dy.to(h.dtype).reshape(n, c, -1) * sig * (1 + h * (1 - sig))
    A, B = dh.sum(2), (dh * xhat).sum(2)                                               # (N, C)
    one_s = 1 + scale if scale is not None else torch.ones_like(A)
    g = (dh * (weight * one_s)[:, :, None]).reshape(n, groups, -1)                    # (N, G, C/G·HW)
    xg = xhat.reshape(n, groups, -1)
    dx = rstd[:, :, None] * (g - g.mean(2, keepdim=True) - xg * (g * xg).mean(2, keepdim=True))
    dx = dx.reshape(x.shape).to(x.dtype).contiguous(memory_format=memory_format(x))
    return dx, (one_s * B).sum(0), (one_s * A).sum(0), weight * B + bias * A, A
    # END ASSIGNMENT
