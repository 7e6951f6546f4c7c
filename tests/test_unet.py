"""The UNet: shapes and every conditioning path, the identity start, gradients, layouts, bad input."""
import pytest
import torch

from helpers import untraced

from rd.unet import UNet, UNetConfig, describe, timestep_embedding


def tiny(**kw):
    cfg = UNetConfig.preset("tiny")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return UNet(cfg)


def randomise(net):
    """Give the zero-initialised output layers weights, so outputs depend on every input."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net.eval()


def test_unconditional_shapes_and_zero_init():
    net = tiny()
    x, t = torch.randn(3, 3, 32, 32), torch.rand(3)
    assert net(x, t).shape == (3, 3, 32, 32)
    assert net(x, t).abs().max() == 0, "the output conv starts at zero (a trained-from-zero residual network)"


def test_class_conditioning_changes_the_output_and_null_label_exists():
    net = randomise(tiny(num_classes=10))
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    a, b, null = (net(x, t, torch.tensor([k, k])) for k in (1, 2, 10))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    with pytest.raises(ValueError, match="needs labels"):
        net(x, t)


def test_cross_attention_on_tokens():
    net = randomise(tiny(context_dim=24))
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    tokens = torch.randn(2, 7, 24)
    out = net(x, t, tokens)
    assert out.shape == (2, 3, 32, 32)
    assert not torch.allclose(out, net(x, t, tokens.flip(0)))
    assert torch.allclose(net(x[:1], t[:1], tokens[:1]), out[:1], atol=1e-5), "samples must not mix in a batch"
    with pytest.raises(ValueError, match="needs tokens"):
        net(x, t, torch.randn(2, 7, 5))


def test_time_matters_and_gradients_reach_every_parameter():
    net = randomise(tiny(num_classes=3, context_dim=0)).train()
    x = torch.randn(2, 3, 32, 32)
    out0, out1 = net(x, torch.zeros(2), torch.tensor([0, 1])), net(x, torch.ones(2), torch.tensor([0, 1]))
    assert not torch.allclose(out0, out1)
    (out0.square().mean() + out1.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing


def test_channels_last_gives_the_same_result():
    net = randomise(tiny())
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    ref = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), t), ref, rtol=1e-4, atol=1e-5)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0.0, 0.5]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert e[1, 4].item() == pytest.approx(torch.sin(torch.tensor(500.0)).item(), abs=1e-4)


def test_presets_and_flop_count():
    d = describe(UNetConfig.preset("tiny"))
    assert d["params_M"] == pytest.approx(0.76, abs=0.01) and d["gflops"] == pytest.approx(0.51, abs=0.01)
    # a 3×3 conv 32→32 on 32×32 costs 2·9·32·32·1024 FLOPs: the counter must see at least the stem's 2·9·3·32·1024
    assert d["gflops"] * 1e9 > 2 * 9 * 3 * 32 * 1024
    with pytest.raises(ValueError, match="allowed: cifar"):
        UNetConfig.preset("imagenet")


@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_compiles_and_matches_eager(channels_last):
    """The whole network traces into one graph (fullgraph) in either memory format (channels-last as it trains on a
    GPU); output and gradients match eager. Two levels at 16 and 8 px, attention at 8: every kind of block, the
    smallest graph (Upsample2x alone: tests/test_layers.py)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cfg = UNetConfig(channels=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, dropout=0.0)
    net = UNet(cfg).double().to(memory_format=fmt)
    for p in net.parameters():                                    # the zero-initialised convs: make them matter
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=fmt)
    t = torch.rand(2, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with untraced():
        out = compiled(x, t)
        g = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    want = net(x, t)
    torch.testing.assert_close(out, want)
    g_want = torch.autograd.grad(want.square().sum(), list(net.parameters()))
    for a, b in zip(g, g_want):
        torch.testing.assert_close(a, b)
