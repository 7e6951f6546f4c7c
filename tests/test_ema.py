"""rd.ema: the EMA update and its warm-up."""
import torch

from rd.ema import EMA


def test_ema_update_past_the_warm_up():
    """e ← d·e + (1 − d)·θ with d = min(decay, (1 + n)/(10 + n))."""
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9)
    ema.updates = 100                                         # past the warm-up: d = min(0.9, 101/110) = 0.9
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for e, b, p in zip(ema.model.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)


def test_ema_decay_takes_over_from_the_warm_up_only_after_9_over_1_minus_decay_steps():
    """EMA(0.999) and EMA(0.9995) agree exactly while the warm-up (1 + n)/(10 + n) is the smaller (n < 8,990)."""
    net = torch.nn.Linear(1, 1, bias=False)
    emas = [EMA(net, 0.999), EMA(net, 0.9995)]
    g = torch.Generator().manual_seed(0)
    for n in range(9500):
        net.weight.data.copy_(torch.randn(1, 1, generator=g))
        for e in emas:
            e.update(net)
        if n == 8988:
            assert torch.equal(emas[0].model.weight, emas[1].model.weight)
    assert not torch.equal(emas[0].model.weight, emas[1].model.weight)
