"""Rectification: reproducible, resumable pair shards; the phased pair formula; a real CPU rectification; bad input."""
import functools
import json

import pytest
import torch

import rd.rectify as rectify_mod  # generate_pairs looks atomic_save up here: the crash test patches it
from rd.metrics import sliced_wasserstein
from rd.mixture import ring_mixture
from rd.orders import rk4
from rd.predictions import target_from_pair
from rd.rectify import (Pairs, flow_batches, flow_student, generate_pairs, load_pairs, pair_batches, phase_boundaries,
                        rectify, sample_phased, student_times)
from rd.sampling import get_grid, sample
from rd.schedules import Coeffs, Schedule, get_schedule, late_t, schedule_params
from rd.sd.latent import generate_latents
from rd.toy import ToyTrainConfig, independent_batches, make_toy, train_toy


MIX = ring_mixture()


def oracle_pairs(tmp_path, name="vp-sd", sub="pairs", **kw):
    s = get_schedule(name)
    args = dict(n=300, shape=(2,), shard_size=128, steps=8, seed=3, progress=False)
    args.update(kw)
    return s, generate_pairs(MIX.net(s, "eps"), s, "eps", tmp_path / sub, **args)


def crash_on_call(n, real):
    """`real`, except that its n-th call raises KeyboardInterrupt (a simulated crash) before doing anything."""
    calls = []

    def wrapper(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("simulated crash")
        return real(*args)
    return wrapper


@pytest.mark.a3
def test_same_seed_same_pairs_and_different_seed_different_pairs(tmp_path):
    s, d1 = oracle_pairs(tmp_path, sub="a")
    _, d2 = oracle_pairs(tmp_path, sub="b", batch=50)           # another batch size: the same pairs
    _, d3 = oracle_pairs(tmp_path, sub="c", seed=4)
    p1, p2, p3 = (load_pairs(d, s, (2,)) for d in (d1, d2, d3))
    assert p1.eps.shape == (300, 2) and p1.x_path.shape == (300, 2, 2)
    torch.testing.assert_close(p1.eps, p2.eps, rtol=0, atol=0)
    torch.testing.assert_close(p1.x_path, p2.x_path, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(p1.eps, p3.eps)
    # the pairs are the teacher's ODE solutions from σ_T·ε
    x0 = sample(MIX.net(s, "eps"), p1.eps[:10], s, "eps", "dpm++2m", 8)
    torch.testing.assert_close(p1.x_path[:10, -1], x0, rtol=1e-5, atol=1e-5, msg=lambda m: (
        f"A3.1: the pair's x̂0 must be the solver's sample from x_T = σ_T·ε (start at σ_{{t_max}}·ε, not at ε; "
        f"one phase = one λ-uniform grid from t_max to t_min).\n{m}"))


@pytest.mark.a3
def test_interrupted_then_resumed_generation_gives_the_same_pairs(tmp_path, monkeypatch):
    s, full = oracle_pairs(tmp_path, sub="full")
    real_save = rectify_mod.atomic_save
    monkeypatch.setattr(rectify_mod, "atomic_save", crash_on_call(2, real_save))      # dies saving shard 2
    with pytest.raises(KeyboardInterrupt):
        oracle_pairs(tmp_path, sub="resumed")
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert list(manifest["shards"]) == ["shard_00000.pt"]                   # one finished shard, nothing half-written
    with pytest.raises(FileNotFoundError, match="missing or unfinished"):
        load_pairs(tmp_path / "resumed", s)
    monkeypatch.setattr(rectify_mod, "atomic_save", real_save)
    mtime = (tmp_path / "resumed" / "shard_00000.pt").stat().st_mtime_ns
    oracle_pairs(tmp_path, sub="resumed")
    assert (tmp_path / "resumed" / "shard_00000.pt").stat().st_mtime_ns == mtime   # finished shard not redone
    a, b = load_pairs(full, s), load_pairs(tmp_path / "resumed", s)
    torch.testing.assert_close(a.eps, b.eps, rtol=0, atol=0)
    torch.testing.assert_close(a.x_path, b.x_path, rtol=0, atol=0)


@pytest.mark.a3
def test_a_limit_reads_only_the_shards_holding_the_first_pairs(tmp_path):
    s, d = oracle_pairs(tmp_path)                                    # 300 pairs in shards of 128, 128, 44
    full = load_pairs(d, s, (2,))
    (d / "shard_00002.pt").unlink()                                  # not needed for the first 256
    for limit in (1, 128, 200, 256):
        part = load_pairs(d, s, (2,), limit=limit)
        assert part.eps.shape == (limit, 2) and part.x_path.shape == (limit, 2, 2)
        torch.testing.assert_close(part.eps, full.eps[:limit], rtol=0, atol=0)
        torch.testing.assert_close(part.x_path, full.x_path[:limit], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="shard_00002.pt is missing or unfinished"):
        load_pairs(d, s, (2,), limit=257)
    with pytest.raises(ValueError, match="limit must be at least 1 pair, got 0"):
        load_pairs(d, s, (2,), limit=0)
    _, small = oracle_pairs(tmp_path, sub="small", n=50)
    assert len(load_pairs(small, s, (2,), limit=10_000).eps) == 50, "a limit above n gives all n pairs"


@pytest.mark.a3
@pytest.mark.parametrize("name", ["vp-sd", "subvp", "ve", "fm"])
@pytest.mark.parametrize("phases", [1, 2, 4])
def test_phase_pairs_recover_the_pair_of_a_first_order_path(tmp_path, name, phases):
    """A model predicting one constant x0 = c is first-order: from x_T = σ_T·ε its path is x_t = α_t·c + σ_t·ε'
    with ε' = ε − (α_T/σ_T)·c. Every phase's (x0_ph, ε_ph) must be (c, ε') (to float32 storage precision)."""
    s = get_schedule(name)
    c = torch.tensor([0.7, -1.3])
    net = lambda x, t: c.to(x).expand_as(x)
    d = generate_pairs(net, s, "x0", tmp_path / "p", 64, (2,), steps=8, phases=phases, progress=False,
                       dtype=torch.float64)
    pairs = load_pairs(d, s, (2,))
    x0_ph, eps_ph = pairs.phase_pairs(s)
    assert x0_ph.shape == (64, phases, 2)
    a_T, s_T = s.alpha(s.t_max).item(), s.sigma(s.t_max).item()
    eps_true = pairs.eps - (a_T / s_T) * c
    torch.testing.assert_close(x0_ph, c.to(x0_ph).expand_as(x0_ph), rtol=1e-5, atol=1e-5, msg=lambda m: (
        f"A3.2 ({name}, K={phases}): on a first-order path every phase pair is (c, ε'). With z = x/α and r = σ/α the "
        f"path is a line in (r, z): ε_ph = (z_k − z_k+1)/(r_k − r_k+1), x0_ph = z_k+1 − r_k+1·ε_ph. If K = 1 "
        f"passes and K > 1 fails, look at A3.1's phase boundaries.\n{m}"))
    torch.testing.assert_close(eps_ph, eps_true[:, None].expand_as(eps_ph).to(eps_ph), rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"A3.2 ({name}, K={phases}): ε_ph should be ε − (α_T/σ_T)·c.\n{m}")


@pytest.mark.a3
def test_crash_between_shard_and_manifest_regenerates_that_shard(tmp_path, monkeypatch):
    """A shard written but not yet recorded is not trusted: resuming rewrites it, with the same content."""
    s, full = oracle_pairs(tmp_path, sub="full")
    real_write = rectify_mod._write_manifest
    monkeypatch.setattr(rectify_mod, "_write_manifest", crash_on_call(2, real_write))  # dies recording shard 2
    with pytest.raises(KeyboardInterrupt):
        oracle_pairs(tmp_path, sub="resumed")
    assert (tmp_path / "resumed" / "shard_00001.pt").exists()                 # on disk, not in the manifest
    monkeypatch.setattr(rectify_mod, "_write_manifest", real_write)
    oracle_pairs(tmp_path, sub="resumed")
    torch.testing.assert_close(load_pairs(full, s).x_path, load_pairs(tmp_path / "resumed", s).x_path, rtol=0, atol=0)


@pytest.mark.a3
def test_pairs_are_tied_to_the_teacher_weights(tmp_path):
    s = get_schedule("fm")
    a, b = make_toy(s, "flow", 1.0, width=16), make_toy(s, "flow", 1.0, width=16)
    generate_pairs(a, s, "flow", tmp_path, 64, (2,), steps=4, progress=False)
    with pytest.raises(ValueError, match="other settings.*teacher"):
        generate_pairs(b, s, "flow", tmp_path, 64, (2,), steps=4, progress=False)


@pytest.mark.a3
def test_rf_baseline_uses_the_same_pairs_in_the_flow_form(tmp_path):
    s, d = oracle_pairs(tmp_path)
    pairs, fm = load_pairs(d, s), get_schedule("fm")
    x0, eps, t = flow_batches(pairs, fm)(500, torch.Generator().manual_seed(0))
    assert torch.cdist(x0.double(), pairs.x_path[:, -1].double()).min(1).values.max() == 0
    assert torch.cdist(eps.double(), pairs.eps.double()).min(1).values.max() == 0
    late = lambda n, g, device: torch.full((n,), 0.9, dtype=torch.float64, device=device)   # noqa: E731
    x0l, epsl, tl = flow_batches(pairs, fm, sample_t=late)(500, torch.Generator().manual_seed(0))
    assert torch.equal(x0l, x0) and torch.equal(epsl, eps) and bool((tl == 0.9).all())    # same pairs, other times
    teacher = make_toy(s, "eps", 1.0, width=16)
    student = flow_student(teacher)
    assert student.schedule.name == "fm" and student.pred_type == "flow" and teacher.schedule.name == "vp-sd"
    for p, q in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


@pytest.mark.a3
def test_phase_batches_pick_the_phase_of_t(tmp_path):
    """t in the first 70 % (in λ) of phase k trains phase k's pair; its last 30 % trains phase k + 1's pair."""
    s, d = oracle_pairs(tmp_path, phases=4, steps=8)
    pairs = load_pairs(d, s)
    x0_ph, _ = pairs.phase_pairs(s)
    x0, eps, t = pair_batches(pairs, s)(4000, torch.Generator().manual_seed(0))
    lam, lam_b = s.lam(t), s.lam(pairs.boundaries)
    position = ((lam - lam_b[0]) / (lam_b[1] - lam_b[0]))           # phases are λ-uniform: phase k is [k, k + 1)
    expected = (position + 0.3).floor().long().clamp(0, 3)
    for k in range(4):
        sel = expected == k
        rows = torch.cdist(x0[sel].double(), x0_ph[:, k].double()).min(1).values
        assert sel.sum() > 20 and float(rows.max()) < 1e-6, f"batches expected in phase {k} must use its pairs"


@pytest.mark.a3
def test_students_of_a_log_normal_teacher_reach_sigma_max_only_with_uniform_times():
    """EDM's own times (log-normal σ) never reach σ_max, where a 1-call sample starts; sample_t=uniform t does."""
    s = get_schedule("ve")                                   # the edm form's schedule: σ from 0.002 to 80
    x = torch.randn(1000, 2, 2, dtype=torch.float64)
    pairs = Pairs(x[:, 0], x, torch.tensor([s.t_max, s.t_min], dtype=torch.float64),
                  {"schedule_params": schedule_params(s), "clean": True})
    g = torch.Generator().manual_seed(0)
    _, _, t_own = pair_batches(pairs, s)(4000, g)
    _, _, t_uni = pair_batches(pairs, s, sample_t=functools.partial(Schedule.sample_t, s))(4000, g)
    assert float(t_own.max()) < 0.9 and 0.03 < float((t_uni > 0.95).double().mean()) < 0.07
    assert float(t_uni.min()) >= s.t_min and float(t_uni.max()) <= s.t_max


@pytest.mark.a3
def test_short_rectification_lowers_one_step_distance(tmp_path):
    """A small VP/v teacher, one round of RD on 2k pairs: the 1-step distance to the target must drop a lot."""
    torch.manual_seed(0)
    s = get_schedule("vp-sd")
    cfg = ToyTrainConfig(steps=400, batch=256, lr=1e-3)
    teacher, _ = train_toy(make_toy(s, "v", 1.43, width=128), s, "v", independent_batches(MIX, s), cfg)
    target = MIX.sample(2000, torch.Generator().manual_seed(1)).float()
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    one_step = lambda net: sliced_wasserstein(sample(net, noise, s, "v", "dpm++1", 1), target)
    train = lambda net, b: train_toy(net, s, "v", b, ToyTrainConfig(steps=250, batch=256, lr=5e-4))[0]
    student = rectify(teacher, s, "v", train,
                      tmp_path / "pairs", 2048, (2,), steps=12, progress=False)
    before, after = one_step(teacher), one_step(student)
    assert after < before / 2, f"1-step sliced-W2 {before:.3f} → {after:.3f}"


@pytest.mark.a3
def test_bad_pair_directories(tmp_path):
    s, d = oracle_pairs(tmp_path)
    with pytest.raises(ValueError, match="holds pairs of schedule 'vp-sd'"):
        load_pairs(d, get_schedule("ve"))
    with pytest.raises(ValueError, match=r"shape \(2,\), not \(3,\)"):
        load_pairs(d, s, (3,))
    with pytest.raises(ValueError, match="cannot train a 'fm' student"):
        pair_batches(load_pairs(d), get_schedule("fm"))
    with pytest.raises(ValueError, match="other settings"):
        oracle_pairs(tmp_path, steps=9)
    with pytest.raises(ValueError, match="holds pairs of schedule 've'"):       # same name, other σ_max
        s_ve, d_ve = oracle_pairs(tmp_path, name="ve", sub="ve")
        load_pairs(d_ve, type(s_ve)(sigma_max=10.0))
    shard = d / "shard_00001.pt"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00001.pt is corrupt"):
        load_pairs(d, s)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.pt is missing"):
        load_pairs(d, s)
    with pytest.raises(FileNotFoundError, match="not a pair directory"):
        load_pairs(tmp_path / "nothing")
    with pytest.raises(ValueError, match="steps ≥ phases"):
        oracle_pairs(tmp_path, sub="x", phases=4, steps=2)


# ----------------------------------------------------------------------------
# Conditional pairs with classifier-free guidance: a closed form.  With data x0 = c (a point mass at the condition),
# ε̂(x, t, c) = (x − α_t·c)/σ_t is exact, and the null condition c = 0 gives ε̂ = x/σ_t. The guided prediction
# ε̂_∅ + w·(ε̂_c − ε̂_∅) = (x − α_t·w·c)/σ_t is the exact ε of data w·c: every guided pair must end at x̂0 = w·c.


def point_mass_net(schedule):
    def net(x, t, c):
        co = schedule(t)
        return (x - co.alpha.view(-1, 1).to(x) * c) / co.sigma.view(-1, 1).to(x)
    return net


@pytest.mark.a3
@pytest.mark.parametrize("guidance,clean", [(1.0, True), (3.0, True), (3.0, False)])
def test_conditional_pairs_follow_their_guided_prompt(tmp_path, guidance, clean):
    s = get_schedule("vp-sd")
    cond = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    d = generate_pairs(point_mass_net(s), s, "eps", tmp_path, n=50, shape=(2,), shard_size=16, steps=3, batch=7,
                       progress=False, cond=cond, null_cond=torch.zeros(2), guidance=guidance, clean=clean)
    pairs = load_pairs(d, s, (2,))
    assert torch.equal(pairs.cond, cond), "each pair keeps its own prompt, in order, across shards and batches"
    first = load_pairs(d, s, (2,), limit=20)                            # 20 of 50 pairs, from two shards of 16
    assert torch.equal(first.cond, cond[:20]) and torch.equal(first.x_path, pairs.x_path[:20])
    start, end = s(pairs.boundaries[:1]), s(pairs.boundaries[-1:])   # from x_T = σ_T·ε the path's noise is
    eps_path = pairs.eps - start.alpha / start.sigma * guidance * cond       # ε − (α_T/σ_T)·w·c
    expected = guidance * cond if clean else (end.alpha * guidance * cond + end.sigma * eps_path).float()
    torch.testing.assert_close(pairs.x_path[:, -1], expected, atol=2e-5, rtol=0, msg=lambda m: (
        f"A3.1: clean pairs end on x̂0 = w·c exactly (the last step lands on σ = 0), others on x_{{t_min}}.\n{m}"))
    x0, eps, t, c = pair_batches(pairs, s)(64, torch.Generator().manual_seed(1))
    idx = [int((cond == ci).all(1).nonzero()) for ci in c]                   # which pair each batch row came from
    torch.testing.assert_close(eps, pairs.phase_pairs(s)[1][idx, 0])
    x0f, epsf, tf, cf = flow_batches(pairs, get_schedule("fm"))(64, torch.Generator().manual_seed(1))
    assert cf.shape == (64, 2)
    with pytest.raises(ValueError, match="needs cond and null_cond"):
        generate_pairs(point_mass_net(s), s, "eps", tmp_path / "x", n=4, shape=(2,), guidance=2.0, progress=False)
    with pytest.raises(ValueError, match="one condition per pair"):
        generate_pairs(point_mass_net(s), s, "eps", tmp_path / "y", n=4, shape=(2,), cond=cond, progress=False)


@pytest.mark.a3
def test_endpoints_view_of_phased_pairs(tmp_path):
    s, d = oracle_pairs(tmp_path, n=40, phases=4)
    pairs = load_pairs(d, s, (2,))
    one = pairs.endpoints()
    assert one.x_path.shape == (40, 2, 2) and len(one.boundaries) == 2
    torch.testing.assert_close(one.x_path[:, -1], pairs.x_path[:, -1], rtol=0, atol=0)
    x0, eps = one.phase_pairs(s)                      # the K = 1 pair passes through the first and last states
    co = s(one.boundaries[:1])
    torch.testing.assert_close((co.alpha * x0[:, 0] + co.sigma * eps[:, 0]).float(), one.x_path[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(x0[:, 0], one.x_path[:, -1], atol=1e-5, rtol=0)       # clean pairs end at σ = 0
    two = pairs.coarsen(2)                            # K = 2 from K = 4: boundaries 0, 2, 4 and their states
    torch.testing.assert_close(two.boundaries, pairs.boundaries[[0, 2, 4]], rtol=0, atol=0)
    torch.testing.assert_close(two.x_path, pairs.x_path[:, [0, 2, 4]], rtol=0, atol=0)
    torch.testing.assert_close(two.boundaries, get_grid(s, 2, "logsnr"), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="dividing 4"):
        pairs.coarsen(3)


@pytest.mark.a3
def test_non_finite_pairs_are_never_written(tmp_path):
    """A teacher whose ODE diverges (here: NaN predictions) stops generation with the shard's name; no shard is saved."""
    ve = get_schedule("ve")
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        generate_pairs(lambda x, t, c: x, ve, "edm", tmp_path / "g", 4, (2,), solver="euler", steps=2,
                       cond=torch.zeros(4, 1), null_cond=torch.zeros(1), guidance=float("inf"), progress=False)
    nan_net = lambda x, t: torch.full_like(x, float("nan"))                       # noqa: E731
    with pytest.raises(FloatingPointError, match="shard_00000.pt would hold 8 non-finite values of 16"):
        generate_pairs(nan_net, ve, "edm", tmp_path / "pairs", 8, (2,), shard_size=4, solver="euler", steps=2,
                       progress=False)
    assert not list((tmp_path / "pairs").glob("*.pt"))


def test_damaged_manifest_names_the_pair_directory_and_the_fix(tmp_path):
    """Refused before any ODE is solved (EDM form on VE, no assignment code)."""
    ve = get_schedule("ve")
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "manifest.json").write_text('{"format": 1, "config": {"sched')
    for call in (lambda: load_pairs(tmp_path / "pairs", ve, (2,)),
                 lambda: generate_pairs(lambda x, t: x, ve, "edm", tmp_path / "pairs", 4, (2,), solver="euler",
                                        steps=2, progress=False)):
        with pytest.raises(ValueError, match=r"manifest.json is not valid JSON .*delete .*pairs and make the pairs "
                                             r"again"):
            call()


@pytest.mark.a3
def test_tqdm_disable_silences_the_pairs_bar(tmp_path, capsys, monkeypatch):
    """TQDM_DISABLE=1 turns the bar of generate_pairs off although it passes `disable` (EDM form on VE, Euler)."""
    ve = get_schedule("ve")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    generate_pairs(lambda x, t: 0 * x, ve, "edm", tmp_path / "quiet", 4, (2,), solver="euler", steps=2)
    assert "pairs →" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    generate_pairs(lambda x, t: 0 * x, ve, "edm", tmp_path / "loud", 4, (2,), solver="euler", steps=2)
    assert "pairs →" in capsys.readouterr().err

# ----------------------------------------------------------------------------
# Phased sampling [RD §2.3]: a perfect phased student, sampled as rdK students are, reproduces the teacher's states at
# the phase boundaries. EDM form on VE: the schedule and the edm conversions hold no assignment code, so the test
# reaches only the first-order step (A2).


def teacher_states(mix, s, x_T, boundaries, n=120):
    """The teacher's PF-ODE states at b_0 … b_K for the exact mixture denoiser, the last one at σ = 0 (the clean
    sample, as the pairs keep it). VE only (α = 1, x = x0 + σ·ε, so dx/dσ = E[ε | x]): classical RK4 with n steps per
    phase, uniform in u = σ^{1/7} (short steps where σ is small). Shares no code with rd's solvers or samplers."""
    sigmas = s.sigma(boundaries).tolist()
    sigmas[-1] = 0.0

    def f(x, u):                                              # dx/du = dx/dσ · dσ/du, σ = u⁷
        sigma = torch.tensor(u ** 7, dtype=torch.float64)
        c = Coeffs(torch.ones_like(sigma), sigma, torch.zeros_like(sigma), torch.ones_like(sigma))
        return 7 * u ** 6 * mix.posterior(x, c)[1]
    x, states = x_T, [x_T]
    for s_start, s_end in zip(sigmas[:-1], sigmas[1:]):
        x = rk4(f, x, s_start ** (1 / 7), s_end ** (1 / 7), n)
        states.append(x)
    return torch.stack(states, 1)                                                     # (B, K+1, D)


def perfect_phased_student(states, boundaries, s, pred_type):
    """The optimum of phased RD on these states: in phase k (b_{k+1} < t ≤ b_k) row i predicts, in the teacher's
    form, the pair (x0_ph, ε_ph) whose forward path α_t·x0 + σ_t·ε passes through states[i, k] at b_k and
    states[i, k+1] at b_{k+1} (MATH.md (5.1), written out here: z = x/α, r = σ/α, the last state at r = 0). Its x̂0 is
    constant in the phase, so one first-order step from states[i, k] at b_k lands on states[i, k+1] [RD Thm. 1]. It
    does not look at x: a sampler whose state leaves the phase's path, or whose steps cross a boundary, misses."""
    K = len(boundaries) - 1
    c = s(boundaries)
    alpha, r = c.alpha.clone(), c.sigma / c.alpha
    alpha[-1], r[-1] = 1.0, 0.0
    z = states / alpha[None, :, None]
    eps_ph = (z[:, :-1] - z[:, 1:]) / (r[:-1] - r[1:])[None, :, None]                # (B, K, D)
    x0_ph = z[:, 1:] - r[None, 1:, None] * eps_ph

    def net(x_in, t):                                         # row i of the batch is sample i
        phase = (boundaries[None, 1:] >= t[:, None]).sum(1).clamp(max=K - 1)         # (B,)
        rows = torch.arange(len(t))
        return target_from_pair(x0_ph[rows, phase], eps_ph[rows, phase], s(t), pred_type)
    return net


@pytest.fixture(scope="module")
def teacher_at_four_phases():
    """VE, the ring mixture, 64 noises: the teacher's states at the boundaries of K = 4 phases (those of K = 2 and 1
    are among them). The reference solution has converged: halving its steps moves it by ~1e-6, so its own error
    (order 4) is ~1e-7."""
    s, mix = get_schedule("ve"), ring_mixture()
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    b = phase_boundaries(s, 4)
    x_T = s.sigma(b[0]).item() * noise
    states = teacher_states(mix, s, x_T, b, n=120)
    error = (states - teacher_states(mix, s, x_T, b, n=60)).abs().max().item()
    assert error < 1e-5, f"the reference ODE solution moves by {error:.1e} from 60 to 120 RK4 steps per phase"
    return s, noise, b, states


# K = 1 is one step straight to σ = 0, the clean end's x̂0 (no DPM-Solver step: no assignment code)
@pytest.mark.parametrize("phases", [1, pytest.param(2, marks=pytest.mark.a2), pytest.param(4, marks=pytest.mark.a2)])
def test_perfect_phased_student_reproduces_the_teachers_boundary_states(teacher_at_four_phases, phases):
    """rdK students sample with K first-order steps (rd.rectify.sample_phased): each must start on a phase boundary of
    the pairs and land on the next, so a student that is first order inside every phase reproduces the teacher's
    states there exactly, and its sample is the teacher's clean sample.  [RD §2.3, Thm. 1]"""
    s, noise, b4, states4 = teacher_at_four_phases
    b = phase_boundaries(s, phases)                           # where generate_pairs keeps the teacher's states
    keep = list(range(0, 5, 4 // phases))
    torch.testing.assert_close(b, b4[keep], rtol=1e-12, atol=0)
    states = states4[:, keep]
    net = perfect_phased_student(states, b, s, "edm")
    seen = []
    x = sample_phased(net, noise, s, "edm", phases, callback=lambda d: seen.append((d["t"], d["x"])))
    assert [t for t, _ in seen] == b[:-1].tolist(), (
        f"K={phases}: the phased sampler must take one step per phase, from each phase boundary of the pairs "
        f"{b.tolist()}; it called the network at t = {[t for t, _ in seen]}")
    for k, (_, x_k) in enumerate(seen):
        torch.testing.assert_close(x_k, states[:, k], rtol=0, atol=1e-10,
                                   msg=lambda m: f"K={phases}: sample_phased (one DPM-Solver++(1) step per phase: "
                                   f"first_order_update, data form) is off the teacher's state at b_{k}\n{m}")
    torch.testing.assert_close(x, states[:, -1], rtol=0, atol=1e-10,
                               msg=lambda m: f"K={phases}: the sample is not the teacher's clean sample\n{m}")
    # train_sd.py samples phased students through rd.sd.latent.generate_latents (float32 output): the same sampler
    tokens = torch.zeros(len(noise), 3, dtype=torch.int64)
    latents = generate_latents(lambda x, t, c: net(x, t), noise, s, "edm", phases, tokens, phased=True)
    torch.testing.assert_close(latents, states[:, -1].float(), rtol=1e-6, atol=1e-6)
    if phases == 4:   # the test can fail: DPM-Solver++(2M) on the same boundaries extrapolates across the phases
        missed = (sample(net, noise, s, "edm", "dpm++2m", phases) - states[:, -1]).abs().max().item()
        assert missed > 1e-2, f"DPM-Solver++(2M) should miss the teacher's clean sample; it is {missed:.2e} away"


def test_student_times_are_each_forms_own_unless_told_and_late_reaches_both_plain_students():
    vp, fm, g = get_schedule("vp-sd"), get_schedule("fm"), lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert student_times("schedule", vp) is None and student_times("schedule", fm) is None
    assert student_times("uniform", fm) is None                             # FM's own times are uniform already
    torch.testing.assert_close(student_times("uniform", vp)(64, g()), Schedule.sample_t(vp, 64, g()))  # continuous
    u = torch.rand(64, generator=g(), dtype=torch.float64)
    torch.testing.assert_close(student_times("uniform", vp)(64, g()), vp.t_min + (vp.t_max - vp.t_min) * u)
    assert student_times("schedule", vp, phases=2) is None                  # phased: its form's own times
    assert student_times("uniform", vp, phases=2) is not None               # uniform: every RD student
    for sch in (vp, fm):
        t = student_times("late", sch)(4096, g())
        u = torch.rand(4096, generator=g(), dtype=torch.float64)
        torch.testing.assert_close(t, sch.t_max - (sch.t_max - sch.t_min) * u * u)


def test_late_draws_a_phased_students_phases_as_uniform_t_does_and_inside_each_towards_its_start():
    vp, fm, g = get_schedule("vp-sd"), get_schedule("fm"), lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for sch in (vp, fm):                                                    # plain students: late_t's draws exactly
        torch.testing.assert_close(student_times("late", sch)(4096, g()), late_t(sch, 4096, g()))
    b = phase_boundaries(vp, 4)
    t = student_times("late", vp, phases=4)(200_000, g())
    assert t.dtype == torch.float64 and (t <= b[0]).all() and (t >= b[-1]).all()
    k = (torch.searchsorted(-b, -t) - 1).clamp(0, 3)                       # each t's phase (b decreases)
    width = b[:-1] - b[1:]
    torch.testing.assert_close(torch.bincount(k, minlength=4).double() / len(t), width / width.sum(), atol=0.005,
                               rtol=0)
    frac = (b[:-1][k] - t) / width[k]                  # 0 at the phase's start, 1 at its end: u², P(frac < δ) = √δ
    for d in (0.01, 0.1, 0.5):
        assert abs((frac < d).double().mean().item() - d ** 0.5) < 0.005, d


def test_evaluation_noise_is_no_pairs_noise(tmp_path):
    """The evaluations (rd.evaluate, rd.sd.evaluate, the tutorials) draw noise from named_noise(seed, "eval noise", …):
    none of its rows is the ε of a pair of the same seed, so a student is never scored on its training pairs."""
    from rd.dist import named_noise
    s, d = oracle_pairs(tmp_path, seed=0, n=512, shard_size=128)
    eps = load_pairs(d, s, (2,)).eps
    noise = named_noise(0, "eval noise", (512, 2))
    assert not (noise[:, None] == eps[None]).all(-1).any(), "an evaluation noise equals a pair's ε"
    old = torch.randn(512, 2, generator=torch.Generator().manual_seed(0 + 2))       # what seed + 2 would have drawn
    assert (old[:128] == eps[256:384]).all(), "the check sees the collision a small seed offset makes"
