"""EDM's preconditioning as the edm prediction type (given code, not an assignment).  [EDM Table 1, Eq. 2, 8]"""
import pytest
import torch

from rd.predictions import (PRED_TYPES, SIGMA_DATA, convert, denoising_loss, net_input, pair_from_prediction,
                            target_from_pair)
from rd.schedules import SCHEDULES, get_schedule

from helpers import noisy_batch


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
