"""rd.evaluate, the CIFAR pipeline's evaluation stage, in parts: samples as uint8 in batches, steady-state sampling
rates, training rates read from a log, student names, the pairs' own FID (the whole stage runs in
tests/test_cifar.py)."""
import math
from types import SimpleNamespace

import torch

import rd.fid
from rd.data import to_uint8
from rd.evaluate import _pairs_fid, generate, is_phased, logged_rate, sampling_rate, student_phases
from rd.rectify import generate_pairs
from rd.sampling import sample
from rd.schedules import get_schedule


class Counting(torch.nn.Module):
    """An x0-network that predicts a fixed image and counts its calls and the images it saw."""

    def __init__(self):
        super().__init__()
        self.calls, self.images = 0, 0

    def forward(self, x, t):
        self.calls, self.images = self.calls + 1, self.images + len(x)
        return torch.full_like(x, 0.25)


def test_generate_gives_the_samples_as_uint8_in_any_batching():
    schedule, noise = get_schedule("vp-sd"), torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = Counting()
    whole = generate(net, schedule, "x0", "dpm++2m", 4, noise, "cpu", batch=10)
    assert whole.dtype == torch.uint8 and whole.shape == (10, 3, 8, 8)
    assert torch.equal(whole, to_uint8(sample(net, noise, schedule, "x0", "dpm++2m", 4)))
    net.calls = 0
    assert torch.equal(generate(net, schedule, "x0", "dpm++2m", 4, noise, "cpu", batch=3), whole)
    assert net.calls == 4 * 4, "4 batches (3, 3, 3, 1) of 4 calls each"
    assert torch.equal(whole, torch.full_like(whole, to_uint8(torch.tensor(0.25)).item())), "ends on x̂0 (σ = 0)"


def test_sampling_rate_times_only_the_batches_after_a_warm_up():
    net, noise = Counting(), torch.randn(20, 3, 8, 8)
    rate = sampling_rate(net, get_schedule("vp-sd"), "x0", "dpm++1", 2, noise, "cpu", batch=8, repeats=3)
    assert rate > 0 and math.isfinite(rate)
    assert net.calls == (1 + 3) * 2 and net.images == (1 + 3) * 2 * 8, "one untimed batch, then 3 timed ones"


def test_logged_rate_is_the_median_of_a_logs_lines_but_the_first(tmp_path):
    assert math.isnan(logged_rate(tmp_path))                                     # no log yet
    lines = [f"step {100 * i}/1000 | loss 0.1 | 70.0 ms/step | {rate} img/s" for i, rate in
             enumerate((500, 7000, 7200, 7100, 9000), 1)]
    (tmp_path / "log.txt").write_text("teacher: started\n" + "\n".join(lines) + "\n")
    assert logged_rate(tmp_path) == 7100.0, "the first line (compilation, warm-up) left out; the lower middle value"
    (tmp_path / "log.txt").write_text(lines[0] + "\n")
    assert logged_rate(tmp_path) == 500.0, "a log of one line gives that line"


def test_student_names_give_their_phases_and_unknown_names_none():
    assert [student_phases(n) for n in ("rd", "rf", "rd1", "rd2", "rd4", "rd12")] == [1, 1, 1, 2, 4, 12]
    assert [student_phases(n) for n in ("rd0", "rdx", "rf2", "teacher", "", "rd-2")] == [None] * 6
    assert [is_phased(n) for n in ("rd", "rf", "rd1", "rd4", "teacher", "rdx")] == [False, False, True, True, False,
                                                                                     False]


def test_the_pairs_own_fid_scores_the_clean_samples_of_the_first_fid_n_pairs(tmp_path, monkeypatch):
    """The students' data: FID of the first --fid_n pairs' last states (x̂0), as uint8 images, against the same
    statistics as every model's samples; no FID for fewer pairs than --fid_n, no row without a pair directory."""
    schedule, net = get_schedule("vp-sd"), lambda x, t: torch.tanh(x)          # x0-prediction, a varied path
    d = generate_pairs(net, schedule, "x0", tmp_path / "pairs", 10, (3, 32, 32), shard_size=4, steps=4, phases=2,
                       seed=5, progress=False)
    scored = []

    def fake_fid(images, mu, cov, inception, device, progress):
        scored.append((images, mu, cov, inception))
        return 1.25
    monkeypatch.setattr(rd.fid, "fid", fake_fid)
    stats, inception = ("mu", "cov"), object()
    what, value = _pairs_fid(SimpleNamespace(fid_n=6), d, schedule, stats, inception, "cpu")
    assert value == 1.25 and what.startswith("the pairs' x̂0 (the first 6: the teacher's dpm++2m, 4 steps through "
                                             "2 phases")
    images, mu, cov, net_used = scored[0]
    path = torch.cat([torch.load(d / f"shard_{i:05d}.pt", weights_only=True)["x_path"] for i in (0, 1)])
    assert images.dtype == torch.uint8 and torch.equal(images, to_uint8(path[:6, -1]))
    assert (mu, cov, net_used) == ("mu", "cov", inception)
    what, value = _pairs_fid(SimpleNamespace(fid_n=11), d, schedule, stats, inception, "cpu")
    assert value is None and "(the first 10: " in what and "; fewer than --fid_n=11, not scored)" in what, what
    what, value = _pairs_fid(SimpleNamespace(fid_n=6), d, schedule, stats, None, "cpu")
    assert value is None and "not scored" not in what, "no Inception file: no FID at all, no reason needed"
    assert _pairs_fid(SimpleNamespace(fid_n=6), tmp_path / "none", schedule, stats, inception, "cpu") is None
    (d / "shard_00001.pt").unlink()                                  # a damaged pair folder: the models still count
    what, value = _pairs_fid(SimpleNamespace(fid_n=6), d, schedule, stats, inception, "cpu")
    assert value is None and "not scored" in what and "incomplete or damaged" in what, what
    assert len(scored) == 1
