"""Distances and trajectory diagnostics against closed forms."""
import math

import pytest
import torch

from rd.metrics import energy_distance, first_order_error, path_deviation, sliced_wasserstein, trajectory
from rd.mixture import ring_mixture
from rd.predictions import Predictor, target_from_pair
from rd.sampling import get_grid
from rd.schedules import get_schedule
from rd.solvers import SOLVERS


def test_sliced_wasserstein_of_a_shift():
    """For y = x + v, every projection is shifted by θ·v: SW₂² = E_θ[(θ·v)²] = |v|²/2 in 2D (whatever the points:
    the sorted projections of y are those of x plus θ·v; the tolerance is for the 4096 random directions)."""
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.tensor([3.0, -4.0], dtype=torch.float64)
    assert sliced_wasserstein(x, x + v, n_proj=4096) == pytest.approx(5 / math.sqrt(2), rel=0.02)
    assert sliced_wasserstein(x, x) == 0.0


def test_energy_distance():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) < 0.01 < energy_distance(x, y + 1.0)
    with pytest.raises(ValueError, match="sample sets"):
        energy_distance(x, y[:, :1])


def test_path_deviation():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None]
    line = t * torch.tensor([[[2.0, 1.0]]], dtype=torch.float64)
    assert path_deviation(line) == pytest.approx(0.0, abs=1e-15)
    corner = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]], dtype=torch.float64)   # apex 1 above a chord of 2
    assert path_deviation(corner) == pytest.approx(0.5)


@pytest.mark.a3
def test_first_order_error_zero_on_first_order_paths_and_not_for_the_mixture():
    s = get_schedule("vp-sd")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(32, 2, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64)
    first = Predictor(lambda x, t: target_from_pair(x0, eps, s(t.double()), "eps"), "eps", s)
    x_T = s.alpha(s.t_max).item() * x0 + s.sigma(s.t_max).item() * eps
    _, _, x0s = trajectory(first, x_T, get_grid(s, 20), SOLVERS["dpm++2m"], s)
    err = first_order_error(x0s)
    assert err < 1e-10, (f"A3.4: x̂0 is the same at every step of a first-order path, so the diagnostic must be 0; "
                         f"got {err} — subtract the mean over the steps (dim 0), not over the batch")
    mix = ring_mixture()
    xs, ts, x0s = trajectory(Predictor(mix.net(s), "eps", s), s.sigma(s.t_max).item() * eps, get_grid(s, 20),
                             SOLVERS["dpm++2m"], s)
    assert xs.shape == (21, 32, 2) and ts.shape == (21,) and x0s.shape == (20, 32, 2)
    err = first_order_error(x0s)
    assert err > 0.3, (f"A3.4: the mixture teacher's x̂0 moves from the data mean to a sample, so the diagnostic is "
                       f"large (≈ 0.5–0.9); got {err} — normalise by sqrt(mean ‖x̂0‖²) over all steps and samples")
