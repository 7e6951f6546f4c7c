"""Layers shared by the networks: the UNet (rd/unet.py) and the autoencoder (rd/sd/autoencoder.py)."""
import torch
from torch import nn


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
