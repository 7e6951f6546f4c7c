"""The image training loop: a run interrupted and resumed equals an uninterrupted one; bad input is refused."""
import math
import os
import signal

import pytest
import torch

from rd.schedules import get_schedule
from rd.train import TrainConfig, train
from rd.unet import UNet, UNetConfig


PX = 16                                                           # image side: the smallest UNet with every block


def toy_batches(schedule):
    data = torch.rand(64, 3, PX, PX, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def batch(n, g):
        idx = torch.randint(0, len(data), (n,), generator=g)
        return data[idx], torch.randn(n, 3, PX, PX, generator=g), schedule.sample_t(n, g), None
    return batch


def tiny_net():
    torch.manual_seed(0)
    return UNet(UNetConfig(channels=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=PX,
                           dropout=0.0))


CFG = dict(steps=6, batch=4, lr=1e-3, warmup=2, log_every=2, ckpt_every=3, amp="fp32", channels_last=False)


def test_resume_equals_uninterrupted(tmp_path):
    s = get_schedule("vp-ddpm")
    full = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "full")
    # an "interrupted" run: 3 steps (one checkpoint), then the same command again
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"steps": 3}), tmp_path / "cut")
    resumed = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "cut")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    log = (tmp_path / "full" / "log.txt").read_text().splitlines()
    assert len(log) == 3 and "img/s" in log[0] and log[-1].startswith("step 6/6 | loss ")


def test_sigterm_saves_a_checkpoint_and_exits_and_the_rerun_equals_uninterrupted(tmp_path, capsys):
    s = get_schedule("vp-ddpm")
    full = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "full")
    calls, batches = [0], toy_batches(s)

    def terminated_during_the_fifth_step(n, g):          # as `timeout` or a cluster's scheduler would
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return batches(n, g)
    with pytest.raises(SystemExit) as stop:
        train(tiny_net(), s, "eps", terminated_during_the_fifth_step, TrainConfig(**CFG), tmp_path / "cut")
    assert stop.value.code == 143                                                     # 128 + SIGTERM, as if killed
    assert "stopped by SIGTERM at step 5 " in capsys.readouterr().err
    assert (tmp_path / "cut" / "log.txt").read_text().splitlines()[-1] == "train: stopped by SIGTERM at step 5"
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"] == 5   # not the step-3 checkpoint
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL                         # the handler is removed
    resumed = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "cut")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    s = get_schedule("vp-ddpm")
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path)
    with pytest.raises(ValueError, match="another config.*'lr': 0.0005"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"lr": 5e-4}), tmp_path)
    with pytest.raises(ValueError, match="another config.*'pred_type'") as refused:
        train(tiny_net(), s, "v", toy_batches(s), TrainConfig(**CFG), tmp_path)
    assert refused.value.diff == {"pred_type": ("eps", "v")}                # the differences, for a caller to read
    # how long to train is not part of a run's identity: a longer run continues the same one
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"steps": 8, "max_minutes": 5.0}), tmp_path)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 8


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    s = get_schedule("vp-ddpm")
    bad = lambda n, g: (torch.full((n, 3, PX, PX), float("nan")), torch.randn(n, 3, PX, PX), s.sample_t(n, g), None)
    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
        train(tiny_net(), s, "eps", bad, TrainConfig(**CFG), tmp_path)


def test_bad_amp(tmp_path):
    s = get_schedule("vp-ddpm")
    with pytest.raises(ValueError, match="amp must be"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"amp": "int8"}), tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is written for a refused config"


def test_weight_like_own_type_is_the_plain_loss_and_v_is_not(tmp_path):
    """Weighting an ε-loss like ε's is the identity (the same bits as no weighting); like v's, it changes training."""
    s = get_schedule("vp-sd")
    with pytest.raises(ValueError, match="unknown prediction type 'velocity'; allowed: eps, x0, v, flow"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"weight_like": "velocity"}), tmp_path)
    with pytest.raises(ValueError, match="no meaning with a loss_fn"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"weight_like": "v"}), tmp_path,
              loss_fn=lambda model, batch: model(batch[0], batch[2]).mean())
    assert not any(tmp_path.iterdir()), "nothing is written for a refused config"
    nets = {}
    for like in (None, "eps", "v"):
        torch.manual_seed(0)
        nets[like] = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"weight_like": like}),
                           tmp_path / str(like)).state_dict()
    assert all(torch.equal(nets[None][k], nets["eps"][k]) for k in nets[None])
    assert not all(torch.equal(nets[None][k], nets["v"][k]) for k in nets[None])


def test_checkpoint_from_before_weight_like_resumes(tmp_path):
    """A checkpoint whose config has no weight_like key (written before the field existed) still resumes."""
    s = get_schedule("vp-ddpm")
    cfg = TrainConfig(**CFG | {"steps": 3})
    train(tiny_net(), s, "eps", toy_batches(s), cfg, tmp_path)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["config"]["train"]["weight_like"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"steps": 6}), tmp_path)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 6


def test_time_budget_counts_over_restarts_and_a_finished_run_only_loads(tmp_path):
    s = get_schedule("vp-ddpm")
    cfg = TrainConfig(**CFG | {"steps": 1000, "max_minutes": 1e-9})    # out of time at the first log line
    first = train(tiny_net(), s, "eps", toy_batches(s), cfg, tmp_path)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == CFG["log_every"] and ckpt["minutes"] > 0
    again = train(tiny_net(), s, "eps", toy_batches(s), cfg, tmp_path)  # the budget is spent: load, don't train
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == CFG["log_every"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_require_done_refuses_to_train(tmp_path):
    s = get_schedule("vp-ddpm")
    with pytest.raises(FileNotFoundError, match="missing; run the 'teacher' stage first"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "t", desc="teacher", require_done=True)
    assert not (tmp_path / "t").exists()
    train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"steps": 3}), tmp_path / "t")
    with pytest.raises(FileNotFoundError, match=r"unfinished \(step 3\)"):
        train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "t", desc="teacher", require_done=True)


def test_failed_compile_warns_and_trains_eagerly(tmp_path, monkeypatch):
    s = get_schedule("vp-ddpm")
    eager = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG), tmp_path / "eager")

    def broken_compile(net):
        def fail(*args, **kw):
            raise RuntimeError("no compiler here")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed .*no compiler here.*training eagerly"):
        fallback = train(tiny_net(), s, "eps", toy_batches(s), TrainConfig(**CFG | {"compile": True}), tmp_path / "c")
    for a, b in zip(eager.state_dict().values(), fallback.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lr_factor_warmup_then_decay():
    """lr/cfg.lr: linear warm-up over `warmup` steps, then 1 − p (linear) or ½(1 + cos πp) (cosine), p the progress
    in steps or in minutes, whichever is further."""
    from rd.train import lr_factor
    cfg = TrainConfig(steps=1000, warmup=100, lr_decay="linear")
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.01) and lr_factor(cfg, 49, 0.0) == pytest.approx(0.5 * (1 - 0.049))
    assert lr_factor(cfg, 500, 0.0) == pytest.approx(0.5) and lr_factor(cfg, 1000, 0.0) == 0.0
    cos = TrainConfig(steps=10**7, warmup=10, lr_decay="cosine", max_minutes=4.0)
    assert lr_factor(cos, 50, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(cos, 50, 9.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(TrainConfig(warmup=10), 5000, 3.0) == 1.0
    with pytest.raises(ValueError, match="lr_decay"):
        train(torch.nn.Linear(2, 2), None, None, None, TrainConfig(lr_decay="step"), "unused")


def ve_batches(nan_from: int | None = None):
    """EDM-form batches on VE (no assignment code is reached); x0 is NaN from the `nan_from`-th call on."""
    s, calls = get_schedule("ve"), [0]
    data = toy_batches(s)

    def batch(n, g):
        calls[0] += 1
        x0, eps, t, cond = data(n, g)
        return (x0 * float("nan") if nan_from and calls[0] >= nan_from else x0), eps, t, cond
    return s, batch


def test_non_finite_data_is_named_and_the_checkpoint_only_when_there_is_one(tmp_path):
    """NaN x0 says the data is at fault (no advice to lower lr), and names the last checkpoint only if it
    exists; a checkpoint is never written after a non-finite loss, even between log lines."""
    s, bad = ve_batches(nan_from=4)                      # log_every 2, ckpt_every 3: a checkpoint at step 3
    with pytest.raises(FloatingPointError) as err:
        train(tiny_net(), s, "edm", bad, TrainConfig(**CFG), tmp_path / "a")
    said = str(err.value)
    assert "loss is nan at step 4" in said and "holds non-finite x0" in said and "lower lr will not help" in said
    assert "amp='fp32'" not in said, "no advice about the optimisation when the data is at fault"
    assert f"{tmp_path / 'a' / 'ckpt.pt'} (step 3) is the last checkpoint" in said, said
    s, bad = ve_batches(nan_from=3)                      # NaN at step 3, a checkpoint step between log lines
    with pytest.raises(FloatingPointError, match="loss is nan at step 3.*No checkpoint was written yet") as err:
        train(tiny_net(), s, "edm", bad, TrainConfig(**CFG), tmp_path / "b")
    assert not (tmp_path / "b" / "ckpt.pt").exists() and "ckpt.pt" not in str(err.value)


def test_truncated_checkpoint_is_named_with_what_to_do(tmp_path):
    s, batches = ve_batches()
    train(tiny_net(), s, "edm", batches, TrainConfig(**CFG | {"steps": 3}), tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"ckpt.pt is not a readable checkpoint .*delete it to start this run over"):
        train(tiny_net(), s, "edm", batches, TrainConfig(**CFG), tmp_path)
    ckpt.write_bytes(b"not a checkpoint\n" * 10)
    with pytest.raises(ValueError, match=r"ckpt.pt is not a readable checkpoint"):
        train(tiny_net(), s, "edm", batches, TrainConfig(**CFG), tmp_path)


def test_tqdm_disable_silences_the_bar_and_a_minute_budget_shows_no_step_total(tmp_path, capsys, monkeypatch):
    s, batches = ve_batches()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    train(tiny_net(), s, "edm", batches, TrainConfig(**CFG | {"steps": 2}), tmp_path / "quiet", desc="quiet")
    assert "quiet" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    train(tiny_net(), s, "edm", batches, TrainConfig(**CFG | {"steps": 10**9, "max_minutes": 1e-9}),
          tmp_path / "budget", desc="budget")            # as rd.cifar's minute budgets: out of time at the first log
    bar = capsys.readouterr().err
    assert "budget" in bar and "1000000000" not in bar and "min" in bar, bar
    log = (tmp_path / "budget" / "log.txt").read_text()
    assert log.startswith("step 2 (") and "/1e-09 min) | loss" in log and "1000000000" not in log, log


def test_stream_seeds_are_the_formula_that_earlier_runs_resume_with():
    """seed·1,000,003 + i: a checkpoint resumed by a later version replays the same batches and pair noise."""
    from rd.dist import stream_seed
    assert [stream_seed(s, i) for s, i in ((0, 0), (0, 7), (1, 0), (2, 5))] == [0, 7, 1_000_003, 2_000_011]


def test_named_seeds_lie_above_every_stream_seed_and_differ_by_name_and_seed():
    """Evaluation noise (named_seed) is never the noise of a training step or a pair shard (stream_seed)."""
    from rd.dist import named_noise, named_seed, stream_seed
    seeds = {(s, name): named_seed(s, name) for s in (0, 1, 2, 10**6) for name in ("eval noise", "grid noise")}
    assert len(set(seeds.values())) == len(seeds), "another name or seed, another stream"
    assert all(2**61 <= v < 2**62 for v in seeds.values()), "above stream_seed's range, a valid torch seed"
    assert stream_seed(10**11 - 1, 1_000_002) * 16 + 15 < 2**61        # a step's seed: stream_seed·world + rank
    assert named_seed(0, "eval noise") == named_seed(0, "eval noise") == 3129271355690211884   # fixed across versions
    assert torch.equal(named_noise(0, "eval noise", (3, 2)),
                       torch.randn(3, 2, generator=torch.Generator().manual_seed(3129271355690211884)))
