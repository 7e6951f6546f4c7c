"""Measured convergence orders of every solver on every schedule, with the exact mixture denoiser.  [DPM]

    python -m rd.orders              # prints the table of measured orders, solver × schedule (minutes on a CPU)

The global error of an order-k solver falls like steps^−k: we solve the PF-ODE of a Gaussian mixture (whose
denoiser is exact, rd.mixture) from the same noise with 16, 32, 64, 128 steps, compare with a reference solution
(classical Runge–Kutta 4, 4 × 128 steps in λ: it shares no code with the solvers it judges) and fit the slope of
log(error) against log(steps).
"""
import math
import time
from dataclasses import dataclass
from functools import lru_cache, partial

import torch

from .cli import FlagChecks, arg, parse
from .mixture import ring_mixture
from .predictions import Predictor
from .sampling import get_grid
from .schedules import SCHEDULES, get_schedule
from .solvers import ORDERS, SOLVERS, dpm_multistep

STEPS = (16, 32, 64, 128)


def smooth_mixture():
    """4 modes on the unit circle, std 0.5: curved trajectories that reach the asymptotic regime by ~16 steps."""
    return ring_mixture(k=4, radius=1.0, std=0.5)


def fit_slope(steps, errors) -> float:
    """Least-squares slope of −log(error) against log(steps): the measured order."""
    x = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    y = torch.tensor([-math.log(e) for e in errors], dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return ((x * y).sum() / (x * x).sum()).item()


def rk4(f, y, s0: float, s1: float, n: int):
    """y(s1) from y(s0) for dy/ds = f(y, s): classical Runge–Kutta 4, n uniform steps."""
    h = (s1 - s0) / n
    for i in range(n):
        s = s0 + i * h
        k1 = f(y, s)
        k2 = f(y + 0.5 * h * k1, s + 0.5 * h)
        k3 = f(y + 0.5 * h * k2, s + 0.5 * h)
        k4 = f(y + h * k3, s + h)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def rk4_reference(model, x, schedule, n: int = 500, t_max: float | None = None, t_min: float | None = None):
    """x_{t_min} from x_{t_max} by classical Runge–Kutta 4 on y = x/σ over n uniform steps in λ:
        dy/dλ = e^λ·x̂0(σ_λ·y, t(λ))      (the data-form exact solution's integrand  [DPM++ Eq. 9])
    smooth in λ for every schedule (the discrete ones are piecewise linear in t, not in λ); error ~ (Δλ/n)⁴.
    model(x, t) → (x̂0, ε̂) as rd.predictions.Predictor. The reference of the solver tests: no DPM-Solver code."""
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    lam_0, lam_1 = schedule.lam(t_max).item(), schedule.lam(t_min).item()

    def f(y, lam):
        t = min(max(schedule.inverse_lambda(torch.tensor(lam, dtype=torch.float64)).item(), t_min), t_max)
        return math.exp(lam) * model(schedule.sigma(t).item() * y, t)[0]
    y = rk4(f, x / schedule.sigma(t_max).item(), lam_0, lam_1, n)
    return schedule.sigma(t_min).item() * y


@lru_cache(maxsize=None)
def reference_problem(schedule_name: str, ref_steps: int, pred_type: str = "eps", n: int = 64, seed: int = 0):
    """(schedule, model, x_T, reference x_{t_min}): the reference is rk4_reference with ref_steps steps (None for 0)."""
    schedule = get_schedule(schedule_name)
    model = Predictor(smooth_mixture().net(schedule, pred_type), pred_type, schedule)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_T = schedule.sigma(schedule.t_max).item() * noise
    return schedule, model, x_T, rk4_reference(model, x_T, schedule, n=ref_steps) if ref_steps else None


def measure_order(solver, schedule_name: str, pred_type: str = "eps", steps=STEPS):
    """(slope, errors): RMS error against the reference solution (RK4 with 4 × the most steps: its error is ≥ 20×
    below a third-order solver's at that count), for each step count."""
    schedule, model, x_T, _ = reference_problem(schedule_name, 0, pred_type)   # the solver first, then the reference
    solutions = [solver(model, x_T, get_grid(schedule, k), schedule) for k in steps]
    ref = reference_problem(schedule_name, 4 * max(steps), pred_type)[3]               # cached per schedule
    errors = [(x - ref).pow(2).mean().sqrt().item() for x in solutions]
    return fit_slope(steps, errors), errors


def solver_table():
    """Every named solver, plus the multistep solvers with a full-order (singlestep) first step."""
    table = {name: (fn, ORDERS[name]) for name, fn in SOLVERS.items() if name != "dpm1"}   # dpm1 is ddim
    for form, prefix in (("noise", "dpm"), ("data", "dpm++")):
        for order in (2, 3):
            table[f"{prefix}{order}m+ss"] = (partial(dpm_multistep, order=order, form=form, warmup="singlestep"), order)
    return table


@dataclass
class OrdersConfig:
    schedules: str = arg(",".join(SCHEDULES), "comma-separated schedule names")


def main(argv=None):
    args = parse(OrdersConfig, argv, __doc__.split("\n")[0], prog="python -m rd.orders")
    names = args.schedules.split(",")
    checks = FlagChecks("python -m rd.orders", args)
    if unknown := [n for n in names if n not in SCHEDULES]:
        checks.bad("schedules", f"unknown {unknown}; allowed: {', '.join(SCHEDULES)}")
    checks.done()
    start = time.time()
    print("| solver | nominal | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for name, (fn, order) in solver_table().items():
        slopes = [measure_order(fn, s)[0] for s in names]
        print(f"| {name} | {order} | " + " | ".join(f"{v:.2f}" for v in slopes) + " |")
    print(f"\nmeasured slopes of log(RMS error) vs log(steps), steps {STEPS}, ε-prediction mixture oracle; "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
