"""The Gaussian-mixture oracle: exact posterior means, checked against Tweedie's formula by autograd."""
import pytest
import torch

from rd.mixture import GaussianMixture, ring_mixture
from rd.schedules import SCHEDULES, get_schedule


def random_mixture(dim, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.rand(k, generator=g) + 0.1, 2 * torch.randn(k, dim, generator=g),
                           0.1 + torch.rand(k, generator=g))


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("dim", [1, 2, 7])
def test_posterior_matches_tweedie(name, dim):
    """x_t = α x0 + σ ε  ⇒  E[x0 | x_t] = (x_t + σ² ∇log p_t)/α,  E[ε | x_t] = −σ ∇log p_t."""
    s, mix = get_schedule(name), random_mixture(dim)
    t = torch.linspace(s.t_min, s.t_max, 9, dtype=torch.float64)[1:-1].repeat_interleave(4)
    c = s(t)
    x_t = (c.alpha[:, None] * mix.sample(len(t), torch.Generator().manual_seed(1))
           + c.sigma[:, None] * torch.randn(len(t), dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    x_t.requires_grad_()
    score, = torch.autograd.grad(mix.log_prob(x_t, c).sum(), x_t)
    x0, eps = mix.posterior(x_t.detach(), c)
    torch.testing.assert_close(eps, -c.sigma[:, None] * score, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(x0, (x_t.detach() + c.sigma[:, None] ** 2 * score) / c.alpha[:, None], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(c.alpha[:, None] * x0 + c.sigma[:, None] * eps, x_t.detach(), rtol=1e-12, atol=1e-12)


def test_single_gaussian_closed_form():
    """One component: E[x0 | x_t] = μ + α s²/(α² s² + σ²)·(x_t − α μ)."""
    mix = GaussianMixture([1.0], [[1.0, -2.0]], [0.5])
    s = get_schedule("vp-linear")
    c = s(torch.tensor([0.4], dtype=torch.float64))
    x_t = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    a, sg = c.alpha.item(), c.sigma.item()
    expected = torch.tensor([[1.0, -2.0]], dtype=torch.float64) + a * 0.25 / (a * a * 0.25 + sg * sg) * (
        x_t - a * torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(mix.posterior(x_t, c)[0], expected)


def test_far_away_points_stay_finite():
    mix, s = ring_mixture(), get_schedule("vp-ddpm")
    x_t = torch.tensor([[1e4, -1e4], [0.0, 0.0]], dtype=torch.float64)
    x0, eps = mix.posterior(x_t, s(torch.tensor([0.001, 0.001], dtype=torch.float64)))
    assert bool(torch.isfinite(x0).all() and torch.isfinite(eps).all())


def test_samples_have_the_mixture_moments():
    mix = ring_mixture(k=8, radius=2.0, std=0.2)
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.01)
    assert (x ** 2).sum(1).mean().item() == pytest.approx(4.0 + 2 * 0.04, rel=0.01)


def test_bad_shapes():
    with pytest.raises(ValueError, match="need weights"):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [1.0])
