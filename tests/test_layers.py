"""rd.layers: Upsample2x is nearest-neighbour ×2, in values, gradient and memory format, eager and compiled."""
import pytest
import torch

from rd.layers import Upsample2x


@pytest.mark.parametrize("size", [(3, 4), (1, 1)], ids=["3x4", "1x1"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample2x_is_nearest_interpolation(channels_last, size):
    """Same values and gradient as nn.Upsample(scale_factor=2, mode="nearest"), dense in x's memory format."""
    h, w = size
    x = torch.randn(2, 5, h, w, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    dy = torch.randn(2, 5, 2 * h, 2 * w, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, want = Upsample2x()(a), torch.nn.Upsample(scale_factor=2, mode="nearest")(b)
    assert torch.equal(y, want)
    cl = channels_last and h * w > 1                                # a 1×1 map is NCHW-contiguous too: NCHW out
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    y.add_(0)                                                     # dense: no element is stored twice
    (y * dy).sum().backward()
    (want * dy).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(a.grad, dy.unflatten(2, (h, 2)).unflatten(4, (w, 2)).sum((3, 5)))  # 2×2 block sums


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample2x_compiles_to_one_graph_in_either_format(channels_last):
    """Each memory format takes its own branch; both trace into one graph (fullgraph) with eager's values and
    gradient. (tests/test_unet.py compiles the whole UNet.)"""
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch._dynamo.reset()
    y, want = torch.compile(Upsample2x(), fullgraph=True, backend="aot_eager")(a), Upsample2x()(b)
    assert torch.equal(y, want) and y.stride() == want.stride()
    dy = torch.randn_like(want)
    (y * dy).sum().backward()
    (want * dy).sum().backward()
    assert torch.equal(a.grad, b.grad)
