"""rd.orders' measuring tools on closed forms: the fitted slope of a power law, and RK4's fourth order. (The solvers'
measured orders are tests/test_solvers.py.)"""
import math

import pytest
import torch

from rd.orders import fit_slope, main, rk4


def test_fit_slope_recovers_the_exponent_of_a_power_law():
    steps = (16, 32, 64, 128)
    for order in (1.0, 2.0, 3.0):
        assert abs(fit_slope(steps, [5.0 * n ** -order for n in steps]) - order) < 1e-12


def test_rk4_is_fourth_order_on_exponential_growth():
    """dy/ds = y from y(0) = 1: y(1) = e; the error falls 16× per halving of the step."""
    y0 = torch.ones(1, dtype=torch.float64)
    errors = [abs(rk4(lambda y, s: y, y0, 0.0, 1.0, n).item() - math.e) for n in (8, 16, 32)]
    assert 3.85 < fit_slope((8, 16, 32), errors) < 4.1, errors


def test_the_command_refuses_an_unknown_schedule_before_measuring(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--schedules=vp-sd,bogus"])
    assert stop.value.code == 2
    assert ("python -m rd.orders: error: --schedules='vp-sd,bogus': unknown ['bogus']; allowed: vp-ddpm"
            in capsys.readouterr().err)
