"""rd.toy: the 2D MLP's checkpoints, and the EMA that averages it."""
import torch

from rd.ema import EMA
from rd.schedules import get_schedule
from rd.toy import load_toy, make_toy, save_toy


def test_ema_and_toy_checkpoints(tmp_path):
    """EMA: e ← d·e + (1 − d)·θ with d = min(decay, (1 + n)/(10 + n)); save_toy/load_toy gives back the same function."""
    s = get_schedule("ve")
    net = make_toy(s, "x0", 1.4, width=16)
    ema = EMA(net, decay=0.9)
    ema.updates = 100                                         # past the warm-up: d = min(0.9, 101/110) = 0.9
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for e, b, p in zip(ema.model.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    save_toy(net, tmp_path / "toy.pt")
    back = load_toy(tmp_path / "toy.pt")
    x, t = torch.randn(8, 2), torch.rand(8)
    torch.testing.assert_close(back(x, t), net(x, t))
    assert back.schedule.name == "ve" and back.pred_type == "x0"
