"""The image training loop: a run interrupted and resumed equals an uninterrupted one; bad input is refused."""
import pytest
import torch

from rd.schedules import get_schedule
from rd.train import TrainConfig, train
from rd.unet import UNet, UNetConfig


def toy_batches(schedule):
    data = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def batch(n, g):
        idx = torch.randint(0, len(data), (n,), generator=g)
        return data[idx], torch.randn(n, 3, 32, 32, generator=g), schedule.sample_t(n, g), None
    return batch


def tiny_net():
    torch.manual_seed(0)
    return UNet(UNetConfig.preset("tiny"))


CFG = dict(steps=6, batch=4, lr=1e-3, warmup=2, log_every=2, ckpt_every=3, amp="fp32", channels_last=False)


def test_resume_equals_uninterrupted(tmp_path):
    s = get_schedule("vp-ddpm")
    full = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "full")
    # an "interrupted" run: 3 steps (one checkpoint), then the same command again
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"steps": 3}), tmp_path / "cut")
    ckpt = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    ckpt["config"]["train"]["steps"] = 6                        # as if the first run had been stopped at step 3
    torch.save(ckpt, tmp_path / "cut" / "ckpt.pt")
    resumed = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "cut")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    log = (tmp_path / "full" / "log.txt").read_text().splitlines()
    assert len(log) == 3 and "img/s" in log[0] and log[-1].startswith("step 6/6 | loss ")


def test_checkpoint_from_another_config_is_refused(tmp_path):
    s = get_schedule("vp-ddpm")
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path)
    with pytest.raises(ValueError, match="another config"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"lr": 5e-4}), tmp_path)


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    s = get_schedule("vp-ddpm")
    bad = lambda n, g: (torch.full((n, 3, 32, 32), float("nan")), torch.randn(n, 3, 32, 32), s.sample_t(n, g), None)
    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
        train(tiny_net(), s, "eps", bad, TrainConfig(**CFG), tmp_path)


def test_bad_amp(tmp_path):
    s = get_schedule("vp-ddpm")
    with pytest.raises(ValueError, match="amp must be"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"amp": "int8"}), tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is written for a refused config"
