"""Step grids and classifier-free guidance."""
import pytest
import torch

from rd.sampling import GRIDS, classifier_free_guidance, get_grid
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
