"""Measured convergence orders of every solver on every schedule, with the exact mixture denoiser.  [DPM]

    python -m rd.orders              # prints the README's table (about a minute on 2 CPU cores)

The global error of an order-k solver falls like steps^−k: we solve the PF-ODE of a Gaussian mixture (whose
denoiser is exact, rd.mixture) from the same noise with 16, 32, 64, 128 steps, compare with a 1000-step
DPM-Solver-3 reference, and fit the slope of log(error) against log(steps).
"""
import argparse
import math
import time
from functools import lru_cache, partial

import torch

from .mixture import ring_mixture
from .predictions import Predictor
from .sampling import get_grid
from .schedules import SCHEDULES, get_schedule
from .solvers import ORDERS, SOLVERS, dpm_multistep, dpm_singlestep

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


@lru_cache(maxsize=None)
def reference_problem(schedule_name: str, pred_type: str = "eps", n: int = 64, seed: int = 0):
    """(schedule, model, x_T, reference x_{t_min}): the reference is 1000 steps of DPM-Solver-3, noise form."""
    schedule = get_schedule(schedule_name)
    model = Predictor(smooth_mixture().net(schedule, pred_type), pred_type, schedule)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_T = schedule.sigma(schedule.t_max).item() * noise
    return schedule, model, x_T, dpm_singlestep(model, x_T, get_grid(schedule, 1000), schedule, order=3, form="noise")


def measure_order(solver, schedule_name: str, pred_type: str = "eps", steps=STEPS):
    """(slope, errors): RMS error against the reference solution, for each step count."""
    schedule, model, x_T, ref = reference_problem(schedule_name, pred_type)
    errors = [(solver(model, x_T, get_grid(schedule, k), schedule) - ref).pow(2).mean().sqrt().item() for k in steps]
    return fit_slope(steps, errors), errors


def solver_table():
    """Every named solver, plus the multistep solvers with a full-order (singlestep) first step."""
    table = {name: (fn, ORDERS[name]) for name, fn in SOLVERS.items() if name != "dpm1"}   # dpm1 is ddim
    for form, prefix in (("noise", "dpm"), ("data", "dpm++")):
        for order in (2, 3):
            table[f"{prefix}{order}m+ss"] = (partial(dpm_multistep, order=order, form=form, warmup="singlestep"), order)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated schedule names")
    args = parser.parse_args()
    names = args.schedules.split(",")
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
