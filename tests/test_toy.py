"""rd.toy: the 2D MLP's checkpoints."""
import torch

from rd.schedules import get_schedule
from rd.toy import load_toy, make_toy, save_toy


def test_toy_checkpoints_give_back_the_same_function(tmp_path):
    """save_toy/load_toy gives back the same function, schedule and prediction type."""
    s = get_schedule("ve")
    net = make_toy(s, "x0", 1.4, width=16)
    save_toy(net, tmp_path / "toy.pt")
    back = load_toy(tmp_path / "toy.pt")
    x, t = torch.randn(8, 2), torch.rand(8)
    torch.testing.assert_close(back(x, t), net(x, t))
    assert back.schedule.name == "ve" and back.pred_type == "x0"
