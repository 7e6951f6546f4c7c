"""Prediction types: every conversion round-trips exactly for every schedule; the loss sees (x0, ε) explicitly.

The tests marked a1 check assignment A1 (tutorials/assignments/A1.md); the edm type, EDM's preconditioning, is given
code (its tests at the end).  [EDM Table 1, Eq. 2, 8]"""
import pytest
import torch

from rd.predictions import (PRED_TYPES, SIGMA_DATA, Predictor, convert, denoising_loss, loss_weight, net_input,
                            pair_from_prediction, target_from_pair)
from rd.schedules import SCHEDULES, get_schedule

from helpers import noisy_batch

a1 = pytest.mark.a1                  # the checks of assignment A1 (tutorials/assignments/A1.md)
A1_TYPES = tuple(p for p in PRED_TYPES if p != "edm")   # the edm type is given code: its tests below


@a1
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("pred_type", A1_TYPES)
def test_pair_round_trip(name, pred_type):
    x0, eps, c, x_t = noisy_batch(get_schedule(name))
    x0_hat, eps_hat = pair_from_prediction(target_from_pair(x0, eps, c, pred_type), x_t, c, pred_type)
    hint = {"eps": "x̂0 = (x_t − σ·ε̂)/α", "x0": "ε̂ = (x_t − α·x̂0)/σ",
            "v": "divide by α² + σ² (it is 1 only on VP: ve and fm need it); v = α·ε − σ·x0",
            "flow": "the determinant is α·σ' − σ·α'; u = α'·x0 + σ'·ε",
            "edm": "the edm type is given (not an assignment block): see the module docstring"}[pred_type]
    for got, want, what in [(x0_hat, x0, "x̂0"), (eps_hat, eps, "ε̂")]:
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8, msg=lambda m: (
            f"A1: the exact {pred_type} target on {name}, converted back, must give the pair's {what}. Check "
            f"target_from_pair and pair_from_prediction for {pred_type}: {hint}.\n{m}"))


@a1
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("src", A1_TYPES)
@pytest.mark.parametrize("dst", A1_TYPES)
def test_convert_between_all_types(name, src, dst):
    x0, eps, c, x_t = noisy_batch(get_schedule(name), seed=1)
    got = convert(target_from_pair(x0, eps, c, src), x_t, c, src, dst)
    torch.testing.assert_close(got, target_from_pair(x0, eps, c, dst), rtol=1e-7, atol=1e-7, msg=lambda m: (
        f"A1: {src} → {dst} on {name} is not exact. convert goes through the pair (x̂0, ε̂): if the round-trip test "
        f"of {src} passes, the target of {dst} is the likely culprit.\n{m}"))


@a1
def test_closed_forms_of_targets():
    """For FM the flow target is RF's u = ε − x0 [RF]."""
    fm = get_schedule("fm")
    x0, eps, c, _ = noisy_batch(fm)
    torch.testing.assert_close(target_from_pair(x0, eps, c, "flow"), eps - x0, msg=lambda m: (
        f"A1.1: the flow target on fm must be ε − x0 (rectified flow's velocity).\n{m}"))


@a1
@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "subvp", "ve", "fm"])
def test_flow_target_is_the_velocity_of_the_pair_path(name):
    """u = d/dt (α_t x0 + σ_t ε), by central differences (continuous schedules)."""
    s, h = get_schedule(name), 1e-6
    x0, eps, _, _ = noisy_batch(s, n=64)
    t = torch.full((64,), 0.5, dtype=torch.float64)
    path = lambda tt: s.alpha(tt)[:, None] * x0 + s.sigma(tt)[:, None] * eps
    torch.testing.assert_close(target_from_pair(x0, eps, s(t), "flow"), (path(t + h) - path(t - h)) / (2 * h),
                               rtol=1e-6, atol=1e-6, msg=lambda m: (
        f"A1.1: the flow target on {name} must be dα/dt·x0 + dσ/dt·ε, the velocity of the pair's path.\n{m}"))


@a1
def test_v_is_the_angular_velocity_on_vp():
    """On VP, with α = cos φ and σ = sin φ, v = dx_t/dφ = α ε − σ x0 (the definition of v-prediction)."""
    s, h = get_schedule("vp-cosine"), 1e-6
    x0, eps, _, _ = noisy_batch(s, n=64)
    phi = torch.full((64,), 0.7, dtype=torch.float64)
    x_at = lambda p: torch.cos(p)[:, None] * x0 + torch.sin(p)[:, None] * eps
    t = s.inverse_lambda(torch.log(torch.cos(phi) / torch.sin(phi)))
    torch.testing.assert_close(target_from_pair(x0, eps, s(t), "v"), (x_at(phi + h) - x_at(phi - h)) / (2 * h),
                               rtol=1e-6, atol=1e-6, msg=lambda m: (
        f"A1.1: the v target on vp-cosine must be α·ε − σ·x0 (dx_t/dφ with α = cos φ, σ = sin φ).\n{m}"))


@a1
@pytest.mark.parametrize("pred_type", A1_TYPES)
def test_loss_is_zero_for_the_exact_target_and_positive_otherwise(pred_type):
    s = get_schedule("vp-ddpm")
    x0, eps, _, _ = noisy_batch(s)
    t = s.sample_t(x0.shape[0], generator=torch.Generator().manual_seed(3))
    perfect = lambda x_t, tt: target_from_pair(x0, eps, s(tt), pred_type)
    assert denoising_loss(perfect, s, x0, eps, t, pred_type).item() < 1e-20
    wrong = lambda x_t, tt: perfect(x_t, tt) + 0.1
    assert denoising_loss(wrong, s, x0, eps, t, pred_type).item() == pytest.approx(0.01, rel=1e-6)


@a1
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("pred_type", A1_TYPES)
@pytest.mark.parametrize("like", PRED_TYPES)
def test_loss_weight_turns_one_types_error_into_anothers(name, pred_type, like):
    """For a wrong x̂0 at a fixed x_t, loss_weight × the squared error of pred_type = the squared error of `like`."""
    x0, eps, c, x_t = noisy_batch(get_schedule(name), seed=2)
    x0_bad = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=x0.dtype)
    eps_bad = (x_t - c.alpha[:, None] * x0_bad) / c.sigma[:, None]            # the same x_t
    err = {p: ((target_from_pair(x0_bad, eps_bad, c, p) - target_from_pair(x0, eps, c, p)) ** 2).sum(1)
           for p in (pred_type, like)}
    torch.testing.assert_close(loss_weight(c, pred_type, like) * err[pred_type], err[like], rtol=1e-8, atol=1e-12)


@a1
def test_weight_like_is_normalised_within_the_batch():
    s = get_schedule("vp-sd")
    x0, eps, _, _ = noisy_batch(s)
    t = s.sample_t(x0.shape[0], generator=torch.Generator().manual_seed(5))
    wrong = lambda x_t, tt: target_from_pair(x0, eps, s(tt), "eps") + 0.1 * x_t
    w = loss_weight(s(t), "eps", "v")
    got = denoising_loss(wrong, s, x0, eps, t, "eps", weight_like="v")
    explicit = denoising_loss(wrong, s, x0, eps, t, "eps", weight=w / w.mean())
    assert got.item() == pytest.approx(explicit.item(), rel=1e-6)
    assert got.item() != pytest.approx(denoising_loss(wrong, s, x0, eps, t, "eps").item(), rel=1e-3)
    with pytest.raises(ValueError, match="allowed: eps, x0, v, flow"):
        denoising_loss(wrong, s, x0, eps, t, "eps", weight_like="velocity")


@a1
@pytest.mark.parametrize("name", ["vp-cosine", "vp-sd", "ve", "fm"])
def test_huber_loss_reads_every_type_through_its_clean_estimate(name):
    """loss="huber" is mean(sqrt((x̂0 − x0)² + c²) − c) whatever the prediction type: the same x̂0 error, the same loss."""
    s = get_schedule(name)
    x0, eps, _, _ = noisy_batch(s)
    t = s.sample_t(x0.shape[0], generator=torch.Generator().manual_seed(6))
    delta = 0.05 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=x0.dtype)
    c = 0.01
    expected = (((delta ** 2 + c ** 2).sqrt() - c).mean(1)).mean().item()
    for pred_type in PRED_TYPES:
        def off(net_in, tt, p=pred_type):    # a network whose x̂0 is x0 + δ at the same x_t (edm sees c_in·x_t)
            cc = s(tt)
            x_t = cc.alpha[:, None] * x0 + cc.sigma[:, None] * eps
            eps_bad = (x_t - cc.alpha[:, None] * (x0 + delta)) / cc.sigma[:, None]
            return target_from_pair(x0 + delta, eps_bad, cc, p)
        got = denoising_loss(off, s, x0, eps, t, pred_type, loss="huber", huber_c=c).item()
        assert got == pytest.approx(expected, rel=1e-9), pred_type
    wrong = lambda x_t, tt: target_from_pair(x0 + 1.0, eps, s(tt), "x0")
    assert denoising_loss(wrong, s, x0, eps, t, "x0", loss="huber", huber_c=1e-3).item() == pytest.approx(1 - 1e-3, rel=1e-6)
    with pytest.raises(ValueError, match="allowed: mse, huber"):
        denoising_loss(wrong, s, x0, eps, t, "x0", loss="l1")


@a1
def test_predictor_gives_pair_for_any_type():
    s = get_schedule("subvp")
    x0, eps, c, x_t = noisy_batch(s, n=1)
    t = s.inverse_lambda(s.lam(0.3)).item()
    c = s(torch.tensor([t], dtype=torch.float64))
    x_t = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
    for pred_type in PRED_TYPES:
        net = lambda x, tt, p=pred_type: target_from_pair(x0, eps, s(tt.double()), p)
        got = Predictor(net, pred_type, s)(x_t, t)
        for k, (what, want) in enumerate((("x̂0", x0), ("ε̂", eps))):
            torch.testing.assert_close(got[k], want, msg=lambda m: (
                f"A1.2: Predictor with {pred_type}-prediction on subvp gives a wrong {what}: check "
                f"pair_from_prediction for {pred_type}.\n{m}"))


@a1
def test_bad_prediction_type():
    s = get_schedule("fm")
    x0, eps, c, x_t = noisy_batch(s, n=4)
    with pytest.raises(ValueError, match="allowed: eps, x0, v, flow"):
        target_from_pair(x0, eps, c, "velocity")
    with pytest.raises(ValueError, match="allowed"):
        Predictor(lambda x, t: x, "score", s)


# ---- the edm type (given code): EDM's preconditioning  [EDM Table 1, Eq. 2, 8] ----

@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("other", PRED_TYPES)
def test_edm_round_trip_and_conversions(name, other):
    x0, eps, c, x_t = noisy_batch(get_schedule(name), n=64, d=2)
    F = target_from_pair(x0, eps, c, "edm")
    for got, want in zip(pair_from_prediction(F, x_t, c, "edm"), (x0, eps)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(convert(F, x_t, c, "edm", other), target_from_pair(x0, eps, c, other), rtol=1e-7, atol=1e-7)


def test_edm_type_is_edms_preconditioning_on_ve():
    """On VE (α = 1): x̂0 = c_skip·x + c_out·F with EDM's c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/sqrt(σ² + σ_d²),
    the input is c_in·x = x/sqrt(σ² + σ_d²), and the plain squared error of F is EDM's λ(σ)·‖D − x0‖²,
    λ = (σ² + σ_d²)/(σ·σ_d)²."""
    x0, eps, c, x_t = noisy_batch(get_schedule("ve"), n=64, d=2)
    sig, sd = c.sigma[:, None], SIGMA_DATA
    F = torch.randn_like(x0)
    c_skip, c_out = sd ** 2 / (sig ** 2 + sd ** 2), sig * sd / (sig ** 2 + sd ** 2).sqrt()
    torch.testing.assert_close(pair_from_prediction(F, x_t, c, "edm")[0], c_skip * x_t + c_out * F)
    torch.testing.assert_close(net_input(x_t, c, "edm"), x_t / (sig ** 2 + sd ** 2).sqrt())
    err_F = (F - target_from_pair(x0, eps, c, "edm")) ** 2
    err_D = (c_skip * x_t + c_out * F - x0) ** 2
    torch.testing.assert_close(err_F, (sig ** 2 + sd ** 2) / (sig * sd) ** 2 * err_D)


@pytest.mark.parametrize("name", ["ve", "vp-sd", "vp-cosine", "fm"])
def test_edm_input_and_target_have_unit_variance(name):
    """Data of std σ_d: c_in·x_t and the target F both have unit variance at every t (EDM's design goals)."""
    s = get_schedule(name)
    g = torch.Generator().manual_seed(0)
    for t in (s.t_min, 0.3, 0.7, s.t_max):
        c = s(torch.full((200_000,), t, dtype=torch.float64))
        x0 = SIGMA_DATA * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
        eps = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
        x_t = c.alpha[:, None] * x0 + c.sigma[:, None] * eps
        for what, v in (("c_in·x_t", net_input(x_t, c, "edm")), ("F", target_from_pair(x0, eps, c, "edm"))):
            assert abs(v.var().item() - 1) < 0.02, f"{name}, t={t}: var({what}) = {v.var().item():.3f}"


def test_denoising_loss_refuses_bad_shapes_and_times():
    """The EDM form on VE (no assignment code): shapes are checked on every device; times outside [0, 1] or
    NaN on CPU tensors (checking values on a GPU would cost a sync every training step)."""
    s = get_schedule("ve")
    x0, eps = torch.zeros(4, 2), torch.randn(4, 2)
    net = lambda x_t, tt: x_t                                                     # noqa: E731
    assert torch.isfinite(denoising_loss(net, s, x0, eps, torch.full((4,), 0.5), "edm"))
    with pytest.raises(ValueError, match=r"x0 \(4, 2\) and eps \(4, 1\) must have one shape"):
        denoising_loss(net, s, x0, eps[:, :1], torch.full((4,), 0.5), "edm")
    with pytest.raises(ValueError, match=r"one time per example, shape \(4,\); got \(3,\)"):
        denoising_loss(net, s, x0, eps, torch.full((3,), 0.5), "edm")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*1 NaN of 4 values"):
        denoising_loss(net, s, x0, eps, torch.tensor([0.5, float("nan"), 0.1, 0.2]), "edm")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*values in \[0.1, inf\]"):
        denoising_loss(net, s, x0, eps, torch.tensor([0.5, float("inf"), 0.1, 0.2]), "edm")
