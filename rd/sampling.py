"""Step grids, classifier-free guidance and the one `sample` call that ties schedule, model and solver together.

    x = sample(net, noise, schedule, pred_type="eps", solver="dpm++2m", steps=20, grid="logsnr")

starts at x_{t_max} = σ_{t_max}·noise (the prior; it drops the α_{t_max}·x0 term, tiny for every schedule's
t_max) and returns the clean sample: its last step goes to σ = 0 (final="x0", as DPM-Solver's denoise_to_zero,
EDM's last step and diffusers' final_sigmas_type="zero", but without an extra call). final="t_min" returns x_{t_min},
which keeps σ_{t_min}·noise in the sample (σ = 0.029 on SD's schedule: 3.7 grey levels of an 8-bit image).
"""
import torch
from torch import Tensor

from .predictions import Predictor
from .schedules import Schedule
from .solvers import MIN_STEPS, get_solver, singlestep_order, singlestep_orders

GRIDS = ("logsnr", "time_uniform", "time_quadratic", "edm")


def get_grid(schedule: Schedule, steps: int, kind: str = "logsnr", t_max: float | None = None,
             t_min: float | None = None, rho: float = 7.0) -> Tensor:
    """steps + 1 decreasing times from t_max to t_min (float64, CPU).  [DPM, EDM Eq. 5]

    logsnr: uniform in λ;  time_uniform: uniform in t;  time_quadratic: uniform in sqrt(t);
    edm: EDM's ρ-grid in r = σ/α = e^{−λ}:  r_i = (r_max^{1/ρ} + i/steps·(r_min^{1/ρ} − r_max^{1/ρ}))^ρ.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1; got {steps!r}")
    t_max = schedule.t_max if t_max is None else float(t_max)
    t_min = schedule.t_min if t_min is None else float(t_min)
    if not (schedule.t_min <= t_min < t_max <= schedule.t_max):
        raise ValueError(f"need {schedule.t_min:g} ≤ t_min < t_max ≤ {schedule.t_max:g} for schedule "
                         f"{schedule.name!r} (its sampling range); got t_min={t_min:g}, t_max={t_max:g}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "logsnr":
        lam_max, lam_min = schedule.lam(t_min), schedule.lam(t_max)
        ts = schedule.inverse_lambda(lam_min + u * (lam_max - lam_min))
    elif kind == "time_uniform":
        ts = t_max + u * (t_min - t_max)
    elif kind == "time_quadratic":
        ts = (t_max ** 0.5 + u * (t_min ** 0.5 - t_max ** 0.5)) ** 2
    elif kind == "edm":
        r_max, r_min = (-schedule.lam(t_max)).exp(), (-schedule.lam(t_min)).exp()
        r = (r_max ** (1 / rho) + u * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
        ts = schedule.inverse_lambda(-r.log())
    else:
        raise ValueError(f"unknown grid {kind!r}; allowed: {', '.join(GRIDS)}")
    ts[0], ts[-1] = t_max, t_min    # exact ends, whatever the round trip through λ did
    return ts


def classifier_free_guidance(net, cond, null_cond, scale: float):
    """net(x, t, cond) ↦ (x, t) ↦ ŷ_∅ + w·(ŷ_c − ŷ_∅), one batched call.  [CFG, RD]

    Every prediction type is affine in the output for fixed (x_t, t), so guiding ε̂, x̂0, v̂ or û is the same
    guidance. scale = 1 is the conditional model alone.
    """
    def guided(x, t):
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_cond]))
        out_c, out_u = out.chunk(2)
        return out_u + scale * (out_c - out_u)
    return guided


FINALS = ("x0", "t_min")


def solver_for(calls: int, multistep: str = "dpm++2m") -> str:
    """The few-step sampler of `calls` network calls, one a step: DPM-Solver++(1) for one call, else `multistep` (a
    multistep solver) where `calls` reaches its order's start-up, else DPM-Solver++(2M)."""
    return "dpm++1" if calls == 1 else multistep if calls >= MIN_STEPS.get(multistep, 1) else "dpm++2m"


def solver_grid(schedule: Schedule, solver: str, steps: int, grid: str = "logsnr", final: str = "x0",
                split: bool = False, t_max: float | None = None, t_min: float | None = None) -> tuple[Tensor, dict]:
    """The time grid of `sample` and the solver's keywords.

    split=True (singlestep DPM-Solvers only) reads `steps` as the number of model calls and spends them as the
    DPM-Solver reference does (rd.solvers.singlestep_orders): K outer steps of orders 3, …, 3, 2, 1, uniform in λ
    over the K steps, or for other grids the K + 1 points of the `steps`-step grid where the orders' running sum lands.
    """
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; allowed: {', '.join(FINALS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1; got {steps!r}")
    if steps < MIN_STEPS.get(solver, 1):
        raise ValueError(f"solver {solver!r} needs at least {MIN_STEPS[solver]} steps to reach its order; "
                         f"got steps={steps} (use a singlestep solver, e.g. 'dpm++2s', for fewer steps)")
    kw = {"denoise_last": final == "x0"}
    order = singlestep_order(solver)
    if not split:
        return get_grid(schedule, steps, grid, t_max=t_max, t_min=t_min), kw
    if order is None:
        raise ValueError(f"split=True spends calls over a singlestep DPM-Solver's orders; {solver!r} is not one")
    orders = singlestep_orders(steps, order, denoise_last=final == "x0")
    if grid == "logsnr":
        ts = get_grid(schedule, len(orders), grid, t_max=t_max, t_min=t_min)
    else:
        ts = get_grid(schedule, steps, grid, t_max=t_max, t_min=t_min)[torch.tensor([0] + orders).cumsum(0)]
    return ts, kw | {"orders": orders}


@torch.no_grad()
def sample(net, noise: Tensor, schedule: Schedule, pred_type: str = "eps", solver: str = "dpm++2m",
           steps: int = 20, grid: str = "logsnr", callback=None, t_max: float | None = None,
           t_min: float | None = None, final: str = "x0", split: bool = False) -> Tensor:
    """Solve the PF-ODE of net from x_{t_max} = σ_{t_max}·noise with `steps` solver steps (see solver_grid);
    final="x0": the clean sample (the last step lands on σ = 0), final="t_min": x_{t_min}."""
    solve = get_solver(solver)
    ts, kw = solver_grid(schedule, solver, steps, grid, final, split, t_max=t_max, t_min=t_min)
    if not torch.is_tensor(noise) or not noise.is_floating_point():
        raise ValueError(f"sample: noise must be a floating-point tensor (e.g. torch.randn(n, *shape)); got "
                         f"{noise.dtype if torch.is_tensor(noise) else type(noise).__name__}")
    if bad := int((~torch.isfinite(noise)).sum()):      # one sync per call, before any network call
        raise ValueError(f"sample: noise holds {bad:,} non-finite values (NaN or ±inf) of {noise.numel():,}; every "
                         "sample would come out NaN: draw the noise with torch.randn, or find where it was divided "
                         "by zero")
    x = schedule.sigma(ts[0]).item() * noise.to(torch.promote_types(noise.dtype, torch.float32))   # state ≥ fp32
    return solve(Predictor(net, pred_type, schedule), x, ts, schedule, callback=callback, **kw)
