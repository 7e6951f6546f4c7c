"""rd.layers: group_norm_silu against a hand-written GroupNorm; ResBlock against its formula with and without a time
embedding, its identity start, its checkpoint keys in both networks; Upsample2x is nearest-neighbour ×2, in values,
gradient and memory format, eager and compiled."""
import pytest
import torch
import torch.nn.functional as F

from rd.layers import ResBlock, Upsample2x, group_norm_silu
from rd.sd.autoencoder import Autoencoder, AutoencoderConfig
from rd.unet import UNet, UNetConfig


def test_group_norm_silu_reference():
    """SiLU(GN(x)·(1 + s) + b) against a hand-written GroupNorm."""
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    norm = torch.nn.GroupNorm(4, 8).double()
    scale, shift = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    g = x.view(2, 4, -1)
    xn = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)).view_as(x)
    h = xn * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(group_norm_silu(x, norm, scale, shift), h * torch.sigmoid(h))


def block_formula(block, x, emb=None):
    """skip(x) + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))·(1 + s) + b))) written with torch.nn.functional (eval mode)."""
    def gn(h, norm):
        return F.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)
    h = F.conv2d(F.silu(gn(x, block.norm1)), block.conv1.weight, block.conv1.bias, padding=1)
    h = gn(h, block.norm2)
    if emb is not None:
        scale, shift = F.linear(F.silu(emb), block.emb.weight, block.emb.bias).chunk(2, dim=1)
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if isinstance(block.skip, torch.nn.Identity) else F.conv2d(x, block.skip.weight, block.skip.bias)
    return skip + h


@pytest.mark.parametrize("c_in, c_out", [(64, 64), (32, 64)], ids=["same-width", "widening"])
def test_resblock_with_embedding_starts_as_skip_and_follows_its_formula(c_in, c_out):
    """zero_init: out = skip(x) at the start (x itself at equal widths); with conv2 trained, the formula, and the
    embedding's scale/shift changes the output."""
    torch.manual_seed(0)
    block = ResBlock(c_in, c_out, emb_dim=16, dropout=0.1, zero_init=True).double().eval()
    x, emb = torch.randn(2, c_in, 6, 5, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    assert block.norm1.num_groups == block.norm2.num_groups == 32, "the default norm has 32 groups"
    want = x if c_in == c_out else F.conv2d(x, block.skip.weight, block.skip.bias)
    assert torch.equal(block(x, emb), want), "zero_init: conv2 is zero, so the block starts as skip(x)"
    with torch.no_grad():
        block.conv2.weight.normal_(0, 0.05), block.conv2.bias.normal_(0, 0.05)
    y = block(x, emb)
    assert y.shape == (2, c_out, 6, 5)
    torch.testing.assert_close(y, block_formula(block, x, emb))
    assert not torch.allclose(y, block(x, emb + 1)), "the embedding enters the block"
    with pytest.raises(ValueError, match="emb_dim=16"):
        block(x)


@pytest.mark.parametrize("c_in, c_out", [(16, 16), (16, 32)], ids=["same-width", "widening"])
def test_resblock_without_embedding(c_in, c_out):
    """emb_dim 0: no emb layer, forward(x); the caller's norm sets the groups; conv2 keeps PyTorch's initialisation;
    skip is a 1×1 conv exactly when the width changes."""
    torch.manual_seed(0)
    block = ResBlock(c_in, c_out, norm=lambda c: torch.nn.GroupNorm(c // 4, c)).double().eval()
    assert block.emb is None and "emb.weight" not in block.state_dict()
    assert (block.norm1.num_groups, block.norm2.num_groups) == (c_in // 4, c_out // 4)
    assert block.conv2.weight.abs().sum() > 0, "without zero_init conv2 has PyTorch's default initialisation"
    if c_in == c_out:
        assert isinstance(block.skip, torch.nn.Identity)
    else:
        assert block.skip.weight.shape == (c_out, c_in, 1, 1)
    x = torch.randn(3, c_in, 4, 7, dtype=torch.float64)
    y = block(x)
    assert y.shape == (3, c_out, 4, 7)
    torch.testing.assert_close(y, block_formula(block, x))
    with pytest.raises(ValueError, match="emb_dim=0"):
        block(x, torch.randn(3, 8, dtype=torch.float64))


def block_keys(net):
    """{parameter and buffer names inside a ResBlock, without the block's path}."""
    blocks = [name for name, m in net.named_modules() if isinstance(m, ResBlock)]
    assert blocks, "the network is built from rd.layers.ResBlock"
    return {k[len(b) + 1:] for k in net.state_dict() for b in blocks if k.startswith(b + ".")}


def test_resblock_keys_in_both_networks_are_the_checkpoint_format():
    """The UNet's blocks hold norm1, conv1, emb, norm2, conv2, skip with conv2 zero at the start; the autoencoder's
    the same less emb, conv2 not zero: the names their checkpoints are saved under."""
    weights_and_biases = {f"{m}.{p}" for m in ("norm1", "conv1", "norm2", "conv2") for p in ("weight", "bias")}
    skip = {"skip.weight", "skip.bias"}
    unet = UNet(UNetConfig.preset("tiny"))
    assert block_keys(unet) == weights_and_biases | skip | {"emb.weight", "emb.bias"}
    assert all(m.conv2.weight.abs().sum() == 0 for m in unet.modules() if isinstance(m, ResBlock))
    ae = Autoencoder(AutoencoderConfig.preset("tiny"))
    assert block_keys(ae) == weights_and_biases | skip
    assert all(m.conv2.weight.abs().sum() > 0 for m in ae.modules() if isinstance(m, ResBlock))


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
