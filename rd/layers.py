"""Layers shared by the networks: the UNet (rd/unet.py) and the autoencoder (rd/sd/autoencoder.py).

    h = group_norm_silu(x, norm, scale, shift)       # SiLU(GN(x)·(1 + scale) + shift), fused by rd.ops on a GPU
    block = ResBlock(c_in, c_out, emb_dim, dropout, zero_init=True)   # the UNet's: time scale/shift, starts as skip(x)
    block = ResBlock(c_in, c_out, norm=make_norm)    # the autoencoder's: no embedding, its own group counts
    y = Upsample2x()(x)                              # nearest-neighbour ×2
"""
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


def group_norm_silu(x, norm: nn.GroupNorm, scale=None, shift=None):
    """SiLU(GroupNorm(x)·(1 + scale) + shift), scale/shift (B, C) or None: the networks' hot spot, fused by rd.ops.

    The reference on CPU tensors; the CUDA kernel on GPU tensors (rd.ops.set_default_impl("ref") turns it off).
    """
    return ops.group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = conv(dropout(SiLU(GN(h)·(1 + s) + b))); out = skip(x) + h, (s, b) from the embedding.

    emb_dim > 0: (s, b) = Linear(SiLU(emb)) per channel and forward(x, emb); emb_dim 0: s = b = 0 and forward(x).
    norm(c) builds the GroupNorm of a width c (default 32 groups). zero_init: the second conv starts at zero, so
    the block starts as skip(x). skip is a 1×1 conv when the width changes, else the identity.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int = 0, dropout: float = 0.0,
                 norm: Callable[[int], nn.GroupNorm] = partial(nn.GroupNorm, 32), zero_init: bool = False):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.norm2, self.drop = norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb=None):
        if (emb is None) != (self.emb is None):
            raise ValueError(f"this ResBlock was built with emb_dim={0 if self.emb is None else self.emb.in_features}: "
                             f"forward(x, emb) needs emb exactly when emb_dim > 0")
        h = self.conv1(group_norm_silu(x, self.norm1))
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1) if self.emb is not None else (None, None)
        h = self.conv2(self.drop(group_norm_silu(h, self.norm2, scale, shift)))
        return self.skip(x) + h


def _dense_format(t):
    """channels_last for a channels_last tensor (that is not also NCHW-contiguous), else NCHW."""
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 of (B, C, H, W), as nn.Upsample(scale_factor=2, mode="nearest"): each pixel becomes a 2×2
    block. Written as expand + reshape, whose gradient is a sum over each 2×2 block (under torch.compile,
    interpolate's is a scatter-add, slow in a compiled training step). The output is dense, in x's memory format
    (.contiguous() is a no-op except on 1×1 maps, where reshape may return an overlapping view)."""

    def forward(self, x):
        b, c, h, w = x.shape
        if _dense_format(x) == torch.channels_last:          # expand in (B, H, W, C) order: the result is NHWC-dense
            y = x.permute(0, 2, 3, 1)[:, :, None, :, None].expand(b, h, 2, w, 2, c)
            return y.reshape(b, 2 * h, 2 * w, c).contiguous().permute(0, 3, 1, 2)
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w).contiguous()
