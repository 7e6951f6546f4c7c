"""Step grids and classifier-free guidance."""
import pytest
import torch

from rd.sampling import GRIDS, classifier_free_guidance, get_grid, solver_for
from rd.schedules import SCHEDULES, get_schedule


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("kind", GRIDS)
def test_grids_decrease_from_t_max_to_t_min(name, kind):
    s = get_schedule(name)
    ts = get_grid(s, 17, kind)
    assert ts.shape == (18,) and ts.dtype == torch.float64
    assert ts[0].item() == s.t_max and ts[-1].item() == s.t_min
    assert bool((ts[1:] < ts[:-1]).all())


def test_logsnr_grid_is_uniform_in_lambda():
    s = get_schedule("vp-sd")
    lam = s.lam(get_grid(s, 10, "logsnr"))
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(10), rtol=0, atol=1e-9)


def test_edm_grid_matches_edm_formula_on_ve():
    """On VE, r = σ/α = σ: the grid is EDM's σ_i = (σ_max^{1/ρ} + i/N·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.  [EDM Eq. 5]"""
    s = get_schedule("ve")
    i = torch.arange(19, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(s.sigma(get_grid(s, 18, "edm")), expected, rtol=1e-10, atol=0)


def test_quadratic_grid():
    s = get_schedule("vp-linear")
    ts = get_grid(s, 4, "time_quadratic")
    torch.testing.assert_close(ts.sqrt().diff(), ts.sqrt().diff().mean().expand(4))


def test_classifier_free_guidance_combines_linearly():
    net = lambda x, t, c: x * c[:, None] + t[:, None]
    x, t = torch.randn(5, 3), torch.rand(5)
    cond, null = torch.full((5,), 2.0), torch.zeros(5)
    for w in (0.0, 1.0, 4.5):
        out = classifier_free_guidance(net, cond, null, w)(x, t)
        torch.testing.assert_close(out, net(x, t, null) + w * (net(x, t, cond) - net(x, t, null)))

# ----------------------------------------------------------------------------
# Sampler endpoints, lower-order final steps and the singlestep order split, on the exact mixture denoiser.

import math

from rd.mixture import GaussianMixture, ring_mixture
from rd.predictions import Predictor
from rd.sampling import sample
from rd.orders import rk4_reference
from rd.solvers import MIN_STEPS, SOLVERS, dpm_multistep, nfe, singlestep_orders


@pytest.mark.parametrize("final", ["x0", "t_min"])
def test_final_x0_leaves_no_residual_noise(final):
    """Two near-point components (std 0.002): the ODE carries the prior onto them, so the clean endpoint's spread
    around each mean is the data's 0.002; x_{t_min} is the marginal there, spread sqrt(α²·0.002² + σ²) = 0.029."""
    s, std = get_schedule("vp-sd"), 0.002
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [std, std])
    noise = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sample(mix.net(s, "x0"), noise, s, "x0", "dpm++2m", 40, final=final)
    c = s(s.t_min)
    scale, spread = (1.0, std) if final == "x0" else (c.alpha.item(), math.hypot(c.alpha.item() * std, c.sigma.item()))
    mean = scale * torch.sign(x[:, :1]) * torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    measured = (x - mean).std().item()
    if final == "x0":       # at most the data's spread (the last x̂0 cannot resolve 0.002), never σ_min's noise
        assert measured < 1.05 * spread, (f"final='x0': samples spread {measured:.4g} around the means, more than the "
                                          f"data's {spread:.4g}: the last step must land on σ = 0")
    else:
        assert abs(measured / spread - 1) < 0.1, f"final='t_min': spread {measured:.4g}, expected {spread:.4g}"


def test_final_x0_matches_the_data_distribution():
    """Resolved components (ring of std 0.2): 25 steps ending on σ = 0 reproduce the data's spread (±5 %)."""
    s, mix = get_schedule("vp-sd"), ring_mixture()
    noise = torch.randn(8000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sample(mix.net(s, "eps"), noise, s, "eps", "dpm++2m", 25)
    nearest = mix.means[torch.cdist(x, mix.means).argmin(1)]
    measured = (x - nearest).std().item()
    assert abs(measured / 0.2 - 1) < 0.05, f"spread around the ring's means {measured:.4f}, the data's 0.2"


@pytest.mark.parametrize("solver", ["dpm++1", "ddim", "dpm++2m", "dpm++3s", "euler", "heun"])
def test_first_order_path_is_exact_in_one_call_and_any_steps(solver):
    """Data = one point c: x̂0 = c along every path (a first-order ODE [RD Thm. 1]), so every sampler ends on c."""
    s = get_schedule("vp-sd")
    c = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    calls = []

    def net(x, t):                                    # the exact ε̂ of a point mass at c
        calls.append(1)
        co = s(t)
        return (x - co.alpha.view(-1, 1) * c) / co.sigma.view(-1, 1)
    noise = torch.randn(16, 2, dtype=torch.float64)
    for steps in {1, MIN_STEPS.get(solver, 1), 5}:
        if steps < MIN_STEPS.get(solver, 1):
            continue
        calls.clear()
        x = sample(net, noise, s, "eps", solver, steps)
        torch.testing.assert_close(x, c.expand_as(x), rtol=0, atol=1e-9, msg=lambda m: f"{solver}, {steps} steps\n{m}")
        assert len(calls) == nfe(solver, steps, denoise_last=True)


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("final", ["x0", "t_min"])
def test_calls_as_advertised(solver, final):
    s, mix = get_schedule("vp-cosine"), ring_mixture()
    calls = []
    net = mix.net(s, "v")
    counted = lambda x, t: calls.append(1) or net(x, t)
    steps = max(4, MIN_STEPS.get(solver, 1))
    sample(counted, torch.randn(8, 2, dtype=torch.float64), s, "v", solver, steps, final=final)
    assert len(calls) == nfe(solver, steps, denoise_last=final == "x0")
    if final == "x0" and solver in ("dpm++1", "dpm++2m", "dpm++3m", "ddim", "dpm2m", "euler"):
        assert len(calls) == steps                    # one call a step: the step to σ = 0 costs no extra call


@pytest.mark.parametrize("nfe_,order,denoise_last,expected", [
    (6, 3, False, [3, 2, 1]), (7, 3, False, [3, 3, 1]), (8, 3, False, [3, 3, 2]), (3, 3, False, [2, 1]),
    (4, 2, False, [2, 2]), (5, 2, False, [2, 2, 1]), (3, 1, False, [1, 1, 1]),
    (4, 2, True, [2, 1, 1]), (8, 3, True, [3, 3, 1, 1]), (6, 3, True, [3, 2, 1]), (1, 3, True, [1])])
def test_singlestep_orders_are_the_references_split(nfe_, order, denoise_last, expected):
    """DPM-Solver's get_orders_and_timesteps_for_singlestep_solver: `nfe` calls, orders 3, …, 3 then 2, 1.  [DPM §3.4]"""
    assert singlestep_orders(nfe_, order, denoise_last) == expected


@pytest.mark.parametrize("solver", ["dpm++3s", "dpm++2s", "dpm3s"])
@pytest.mark.parametrize("grid", ["logsnr", "time_uniform"])
@pytest.mark.parametrize("final", ["x0", "t_min"])
def test_split_spends_exactly_the_calls(solver, grid, final):
    s, mix = get_schedule("vp-sd"), ring_mixture()
    calls, net = [], mix.net(s, "eps")
    counted = lambda x, t: calls.append(1) or net(x, t)
    noise = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for steps in (5, 6, 12):
        calls.clear()
        x = sample(counted, noise, s, "eps", solver, steps, grid, final=final, split=True)
        assert len(calls) == steps, f"{solver} split over {steps} calls made {len(calls)}"
    if grid == "logsnr" and final == "t_min":
        ref = rk4_reference(Predictor(net, "eps", s), s.sigma(s.t_max).item() * noise, s, n=200)   # error ~1e-7
        err = (x - ref).norm(dim=1).mean().item()
        assert err < 0.05, f"{solver} split over 12 calls is {err:.3f} away from the exact solution"


def test_lower_order_final_helps_few_steps():
    """6 steps on a uniform-t grid (mixture oracle, vp-sd): the last steps are large in λ; extrapolating differences
    there costs accuracy. Measured: 2M 3.6× and 3M 16× lower error with the reference's lower-order final steps."""
    s, mix = get_schedule("vp-sd"), ring_mixture()
    model = Predictor(mix.net(s, "eps"), "eps", s)
    x_T = s.sigma(s.t_max).item() * torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = get_grid(s, 6, "time_uniform")
    x = {(order, lof): dpm_multistep(model, x_T, ts, s, order=order, lower_order_final=lof)
         for order in (2, 3) for lof in (False, True)}
    ref = rk4_reference(model, x_T, s, n=200)                 # RK4 error ~1e-7, the solvers' ≥ 1e-3
    for order, gain in ((2, 2.5), (3, 8.0)):
        err = [(x[order, lof] - ref).norm(dim=1).mean().item() for lof in (False, True)]
        assert err[0] > gain * err[1], f"DPM-Solver++({order}M), 6 steps: error {err[0]:.4f} → {err[1]:.4f}"


@pytest.mark.parametrize("name", ["vp-sd", "ve", "vp-sd-zsnr", "vp-cosine"])
def test_every_prediction_type_of_the_oracle_samples_the_same(name):
    """The exact denoiser written as ε, x0, v, flow or edm (which sees c_in·x_t) is one ODE: the same samples."""
    from rd.predictions import PRED_TYPES
    s, mix = get_schedule(name), ring_mixture()
    noise = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = sample(mix.net(s, "eps"), noise, s, "eps", "dpm++2m", 12)
    for pred_type in PRED_TYPES:
        x = sample(mix.net(s, pred_type), noise, s, pred_type, "dpm++2m", 12)
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-7, msg=lambda m: f"{pred_type} on {name}\n{m}")


def test_non_finite_or_integer_noise_is_refused_before_any_call():
    """(EDM form on VE, Euler: no assignment code) NaN noise would give NaN samples without an error."""
    s, calls = get_schedule("ve"), []
    net = lambda x, t: calls.append(1) or x                                       # noqa: E731
    noise = torch.randn(8, 2)
    noise[3, 1] = float("nan")
    noise[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"noise holds 2 non-finite values \(NaN or ±inf\) of 16"):
        sample(net, noise, s, "edm", "euler", 4)
    with pytest.raises(ValueError, match="noise must be a floating-point tensor"):
        sample(net, torch.ones(8, 2, dtype=torch.int64), s, "edm", "euler", 4)
    assert not calls
    assert torch.isfinite(sample(net, noise.nan_to_num(0.0, 0.0, 0.0), s, "edm", "euler", 4)).all()


def test_the_few_step_solver_by_calls():
    assert [solver_for(k) for k in (1, 2, 4)] == ["dpm++1", "dpm++2m", "dpm++2m"]
    assert [solver_for(k, "dpm++3m") for k in (1, 2, 3, 10)] == ["dpm++1", "dpm++2m", "dpm++3m", "dpm++3m"]
