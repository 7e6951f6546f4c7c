"""Schedules against their closed forms: derivatives, λ and its inverse, β definitions, ranges, bad input."""
import math

import pytest
import torch

from rd.schedules import SCHEDULES, VPDiscrete, get_schedule, late_t

NAMES = list(SCHEDULES)
VP = ["vp-ddpm", "vp-sd", "vp-linear", "vp-cosine"]       # built on the VP helpers of assignment A1 (A1.3–A1.5)


def a1(*names):
    """NAMES as parametrize values, those in `names` marked a1: the cases that run assignment A1's code."""
    return [pytest.param(n, marks=pytest.mark.a1) if n in names else n for n in NAMES]


def interior(schedule, n=201):
    """Times strictly inside the sampling range, avoiding the discrete schedules' knots."""
    return torch.linspace(schedule.t_min, schedule.t_max, n, dtype=torch.float64)[1:-1] + 1e-7


@pytest.mark.parametrize("name", a1(*VP, "subvp"))
def test_derivatives_match_autograd(name):
    s = get_schedule(name)
    t = interior(s).requires_grad_()
    c = s(t)
    d_alpha, = torch.autograd.grad(s.alpha(t).sum(), t)
    d_sigma, = torch.autograd.grad(s.sigma(t).sum(), t)
    torch.testing.assert_close(c.d_alpha, d_alpha, rtol=1e-9, atol=1e-12, msg=lambda m: (
        f"A1.5: dα/dt of {name} differs from autograd through α_t: dα = α·d(log α)/dt.\n{m}"))
    torch.testing.assert_close(c.d_sigma, d_sigma, rtol=1e-9, atol=1e-12, msg=lambda m: (
        f"A1.5: dσ/dt of {name} differs from autograd through σ_t: from α² + σ² = 1, dσ = −α·dα/σ (and σ itself "
        f"comes from A1.3).\n{m}"))


@pytest.mark.parametrize("name", a1(*VP, "subvp"))
def test_derivatives_match_finite_differences(name):
    s, h = get_schedule(name), 1e-6
    t = interior(s, 51)
    c = s(t)
    for what, got, f in (("dα/dt", c.d_alpha, s.alpha), ("dσ/dt", c.d_sigma, s.sigma)):
        torch.testing.assert_close(got, (f(t + h) - f(t - h)) / (2 * h), rtol=1e-5, atol=1e-7, msg=lambda m: (
            f"A1.5: {what} on {name} differs from the finite difference of the schedule itself.\n{m}"))


@pytest.mark.parametrize("name", a1(*VP, "fm"))
def test_lambda_inverse_round_trip_and_monotone(name):
    s = get_schedule(name)
    t = torch.linspace(s.t_min, s.t_max, 4001, dtype=torch.float64)
    lam = s.lam(t)
    assert bool((lam[1:] < lam[:-1]).all()), "λ_t must be strictly decreasing (A1.3: is log σ right?)"
    torch.testing.assert_close(s.inverse_lambda(lam), t, rtol=0, atol=1e-10, msg=lambda m: (
        f"A1.4/A1.6: t(λ(t)) ≠ t on {name}. VP: log α = −½·softplus(−2λ); FM: solve λ = log((1 − t)/t) for t. "
        f"Use stable functions (softplus, sigmoid), not exp of large numbers.\n{m}"))


@pytest.mark.parametrize("name", a1(*VP))
def test_family_identities(name):
    s = get_schedule(name)
    t = interior(s)
    a, sg = s.alpha(t), s.sigma(t)
    if name.startswith("vp"):
        torch.testing.assert_close(a ** 2 + sg ** 2, torch.ones_like(t), rtol=0, atol=1e-12, msg=lambda m: (
            f"A1.3: on {name} α² + σ² must be 1: log σ = ½·log(1 − α²), computed as ½·log(−expm1(2·log α)).\n{m}"))
    elif name == "subvp":
        torch.testing.assert_close(sg, 1 - a ** 2, rtol=0, atol=1e-12)
    elif name == "ve":
        torch.testing.assert_close(a, torch.ones_like(t))
        torch.testing.assert_close(s.sigma(torch.tensor([0.0, 1.0])), torch.tensor([0.002, 80.0], dtype=torch.float64))
    elif name == "fm":
        torch.testing.assert_close(a, 1 - t, rtol=0, atol=1e-15)
        torch.testing.assert_close(sg, t, rtol=0, atol=1e-15)


def test_vp_linear_closed_form():
    s = get_schedule("vp-linear")
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t), torch.exp(-0.25 * t ** 2 * (20 - 0.1) - 0.5 * t * 0.1))


def test_cosine_closed_form():
    s = get_schedule("vp-cosine")
    t = torch.linspace(0, 0.99, 11, dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2)
    torch.testing.assert_close(s.alpha(t), f(t) / f(torch.zeros(1, dtype=torch.float64)))


@pytest.mark.parametrize("beta,first,last", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)])
def test_discrete_reproduces_beta_definition(beta, first, last):
    s = VPDiscrete(beta)
    j = torch.arange(1000, dtype=torch.float64) / 999
    expected = first + j * (last - first) if beta == "linear" else (first ** 0.5 + j * (last ** 0.5 - first ** 0.5)) ** 2
    torch.testing.assert_close(s.betas, expected, rtol=1e-12, atol=0)
    i = torch.arange(1, 1001, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - s.betas, 0)
    # at the knots t_i = i/N the interpolated schedule is exactly sqrt(ᾱ_i)
    torch.testing.assert_close(s.alpha(i / 1000.0) ** 2, alphas_cumprod, rtol=1e-12, atol=0)
    # between knots log α is the linear interpolation
    mid = s.alpha((i[:-1] + 0.5) / 1000.0).log()
    torch.testing.assert_close(mid, 0.25 * (alphas_cumprod[:-1].log() + alphas_cumprod[1:].log()))


@pytest.mark.a1
def test_stable_diffusion_final_alpha_bar():
    """SD's scaled-linear ᾱ at the 1000th step is 0.0047 (the number every SD sampler relies on)."""
    s = get_schedule("vp-sd")
    assert s.alpha(1.0).item() ** 2 == pytest.approx(0.0047, abs=5e-5)
    assert s.t_min == 1 / 1000 and s.sigma(1 / 1000).item() ** 2 == pytest.approx(0.00085)


@pytest.mark.parametrize("name", NAMES)
def test_training_times_in_range(name):
    s = get_schedule(name)
    t = s.sample_t(4096, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and t.shape == (4096,)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t.std()) > 0.05, "training times should spread over the range"


def test_discrete_training_times_are_the_steps():
    t = get_schedule("vp-ddpm").sample_t(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t * 1000, (t * 1000).round())
    assert float(t.min()) >= 1e-3


def test_ve_training_times_follow_edm_lognormal():
    s = get_schedule("ve")
    log_sigma = s.sigma(s.sample_t(100_000, generator=torch.Generator().manual_seed(0))).log()
    inside = log_sigma[(log_sigma > math.log(0.002) + 1e-6) & (log_sigma < math.log(80) - 1e-6)]
    assert inside.median().item() == pytest.approx(-1.2, abs=0.03)


def test_bad_input():
    with pytest.raises(ValueError, match="allowed: vp-ddpm"):
        get_schedule("vp-ddpn")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        get_schedule("fm").alpha(1.5)
    with pytest.raises(ValueError, match="t must lie"):
        get_schedule("vp-linear")(torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match="scaled_linear"):
        VPDiscrete("cosine")


def test_zero_terminal_snr_rescaling():
    """SD's schedule rescaled [Lin et al. 2024, Alg. 1]: √ᾱ_1 unchanged, √ᾱ_N → 0 (stored as 2⁻¹²), linear map."""
    base, z = get_schedule("vp-sd"), get_schedule("vp-sd-zsnr")
    a, az = base.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    torch.testing.assert_close(az[:-1], ((a - a[-1]) * a[0] / (a[0] - a[-1]))[:-1], rtol=1e-12, atol=0)
    assert az[0].item() == pytest.approx(a[0].item(), rel=1e-12) and az[-1].item() == 2.0 ** -12
    assert z.sigma(1.0).item() == pytest.approx(1.0, abs=1e-7) and z.lam(1.0).item() == pytest.approx(-12 * math.log(2), rel=1e-6)
    lam = z.lam(torch.linspace(z.t_min, 1.0, 5001, dtype=torch.float64))
    assert bool((lam.diff() < 0).all()), "λ must decrease strictly"


@pytest.mark.a1                      # vp-cosine's t(λ) is built on A1.4
def test_lognormal_t_is_edms_noise_levels_on_any_schedule():
    """log(σ/α) ~ N(−1.2, 1.2²) mapped through t(λ): VE's own sampler on VE, the same σ/α law on a VP schedule."""
    from rd.schedules import lognormal_t
    g = lambda: torch.Generator().manual_seed(0)                                   # noqa: E731
    ve, cosine = get_schedule("ve"), get_schedule("vp-cosine")
    torch.testing.assert_close(lognormal_t(ve, 1000, g()), ve.sample_t(1000, g()))
    t = lognormal_t(cosine, 20_000, g())
    log_r = -torch.randn(20_000, generator=g(), dtype=torch.float64).mul(1.2).sub(1.2)   # −log σ/α drawn alike
    inside = (t > cosine.t_min) & (t < cosine.t_max)
    assert inside.float().mean() > 0.99
    torch.testing.assert_close(cosine.lam(t[inside]), log_r[inside], rtol=0, atol=1e-8)


def test_late_t_has_its_closed_form_law_on_every_schedule():
    """t = t_max − (t_max − t_min)·u²: inside [t_min, t_max], P(t > t_max − δ·range) = √δ, E[t] = t_max − range/3."""
    for name in NAMES:
        s = get_schedule(name)
        span = s.t_max - s.t_min
        t = late_t(s, 200_000, torch.Generator().manual_seed(0))
        assert t.dtype == torch.float64 and t.min() >= s.t_min and t.max() <= s.t_max
        for delta in (0.01, 0.1, 0.5):                       # 200k draws: the frequency's std ≤ 0.0012
            assert (t > s.t_max - delta * span).double().mean().item() == pytest.approx(delta ** 0.5, abs=0.006)
        assert t.mean().item() == pytest.approx(s.t_max - span / 3, abs=0.003 * span)
