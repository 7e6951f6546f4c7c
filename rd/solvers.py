"""DPM-Solver: the exact-solution ODE integrator, orders 1–3, singlestep and multistep, noise and data form.

Sampling solves the probability-flow ODE from t_max to t_min. With λ = log(α/σ) and h = λ_t − λ_s its solution
is exact in the linear part  [DPM Prop. 3.1, DPM++ Eq. 9]:
    noise form:  x_t = (α_t/α_s)·x_s − α_t ∫ e^{−λ} ε̂ dλ        data form:  x_t = (σ_t/σ_s)·x_s + σ_t ∫ e^{λ} x̂0 dλ
and DPM-Solver Taylor-expands only the prediction in λ. The two forms are mirror images; with
    noise: (A, B, ĥ, P) = (α, σ, h, ε̂)            data: (A, B, ĥ, P) = (σ, α, −h, x̂0)
every update below reads  x_t = (A_t/A_s)·x_s − B_t·[φ1·P_s + (correction from differences of P)],
    φ1 = expm1(ĥ),  φ2 = φ1/ĥ − 1,  φ3 = φ2/ĥ − ½      (h·φ_k are the exponential integrals of the Taylor terms).
Nothing assumes α² + σ² = 1: every schedule of rd.schedules works.

A solver is a plain function  solver(model, x, ts, schedule, callback=None, *, denoise_last=False) → x  where
    model(x, t) → (x̂0, ε̂)   (an rd.predictions.Predictor), t a Python float;
    ts: decreasing times t_max = ts[0] > … > ts[-1] = t_min (rd.sampling.get_grid);
    callback(dict(i, t, x, x0_pred, eps_pred)) runs at every step start (trajectories, first-order metrics).
Coefficients are Python floats (float64), computed on the host: no device synchronisation per step.
"""
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

FORMS = ("noise", "data")


def _at(schedule, t: float) -> tuple[float, float, float]:
    """(α_t, σ_t, λ_t) as Python floats."""
    c = schedule(t)
    a, s = c.alpha.item(), c.sigma.item()
    return a, s, math.log(a) - math.log(s)


def _form(schedule, t: float, form: str) -> tuple[float, float, float]:
    """(A_t, B_t, λ_t) of the form: (α, σ, λ) for noise, (σ, α, λ) for data."""
    a, s, lam = _at(schedule, t)
    return (a, s, lam) if form == "noise" else (s, a, lam)


def _pick(pred, form):
    """P: ε̂ in the noise form, x̂0 in the data form."""
    return pred[1] if form == "noise" else pred[0]


def _hat(h: float, form: str) -> float:
    """ĥ = h in the noise form, −h in the data form.  [DPM++; MATH.md (3.5)]"""
    return h if form == "noise" else -h


def _phis(hh: float) -> tuple[float, float, float]:
    """(φ1, φ2, φ3) = ĥ·(φ_1, φ_2, φ_3)(ĥ) = (expm1(ĥ), φ1/ĥ − 1, φ2/ĥ − ½).  [DPM; MATH.md (3.6)]"""
    phi1 = math.expm1(hh)
    phi2 = phi1 / hh - 1.0
    return phi1, phi2, phi2 / hh - 0.5

# ----------------------------------------------------------------------------
# Step functions: (x, s, t, …) → x_t, no hidden state.


def first_order_update(schedule, x, s: float, t: float, pred_s, form: str):
    """x_t = (A_t/A_s)·x_s − B_t·expm1(ĥ)·P_s: DDIM in the noise form, DPM-Solver++(1) in the data form.  [DPM, DPM++]"""
    # BEGIN ASSIGNMENT A2.1: the first-order step (DDIM in the noise form, DPM-Solver++(1) in the data form) — see [DPM] eq. (3.7), [DPM++] eq. (9)
    A_s, _, lam_s = _form(schedule, s, form)
    A_t, B_t, lam_t = _form(schedule, t, form)
    return (A_t / A_s) * x - (B_t * math.expm1(_hat(lam_t - lam_s, form))) * _pick(pred_s, form)
    # END ASSIGNMENT


def singlestep_2_update(model, schedule, x, s: float, t: float, pred_s, form: str, r1: float = 0.5):
    """u = 1st-order step to s1 = t(λ_s + r1·h);  x_t = (A_t/A_s)x − B_t·φ1·P_s − B_t·φ1/(2r1)·(P_s1 − P_s).  [DPM Alg. 1, DPM++ Alg. 1]"""
    # BEGIN ASSIGNMENT A2.2: the second-order singlestep step (DPM-Solver-2 / DPM-Solver++(2S)) — see [DPM] Alg. 1, [DPM++] Alg. 1
    A_s, _, lam_s = _form(schedule, s, form)
    A_t, B_t, lam_t = _form(schedule, t, form)
    h = lam_t - lam_s
    s1 = schedule.inverse_lambda(lam_s + r1 * h).item()
    u = first_order_update(schedule, x, s, s1, pred_s, form)
    P_s, P_s1 = _pick(pred_s, form), _pick(model(u, s1), form)
    phi1 = math.expm1(_hat(h, form))
    return (A_t / A_s) * x - (B_t * phi1) * P_s - (B_t * phi1 / (2 * r1)) * (P_s1 - P_s)
    # END ASSIGNMENT


def singlestep_3_update(model, schedule, x, s: float, t: float, pred_s, form: str,
                        r1: float = 1 / 3, r2: float = 2 / 3):
    """Two inner points s1, s2 at r1·h, r2·h;  x_t = (A_t/A_s)x − B_t·φ1·P_s − B_t·φ2/r2·(P_s2 − P_s).  [DPM Alg. 2; data form: DPM++ reference code]"""
    # BEGIN ASSIGNMENT A2.3: the third-order singlestep step (two inner points at r1·h and r2·h) — see [DPM] Alg. 2, [DPM++] App. B
    A_s, _, lam_s = _form(schedule, s, form)
    A_t, B_t, lam_t = _form(schedule, t, form)
    h = lam_t - lam_s
    s1 = schedule.inverse_lambda(lam_s + r1 * h).item()
    s2 = schedule.inverse_lambda(lam_s + r2 * h).item()
    P_s = _pick(pred_s, form)
    u1 = first_order_update(schedule, x, s, s1, pred_s, form)
    D1 = _pick(model(u1, s1), form) - P_s
    A_s2, B_s2, _ = _form(schedule, s2, form)
    phi1_2, phi2_2, _ = _phis(_hat(r2 * h, form))
    u2 = (A_s2 / A_s) * x - (B_s2 * phi1_2) * P_s - (B_s2 * phi2_2 * r2 / r1) * D1
    D2 = _pick(model(u2, s2), form) - P_s
    phi1, phi2, _ = _phis(_hat(h, form))
    return (A_t / A_s) * x - (B_t * phi1) * P_s - (B_t * phi2 / r2) * D2
    # END ASSIGNMENT


def multistep_2_update(schedule, x, t_prev: float, s: float, t: float, pred_prev, pred_s, form: str):
    """r = h_prev/h, D1 = (P_s − P_prev)/r;  x_t = (A_t/A_s)x − B_t·φ1·(P_s + ½·D1).  [DPM++ Alg. 2]"""
    # BEGIN ASSIGNMENT A2.4: the second-order multistep step (DPM-Solver++(2M)) from the last two predictions — see [DPM++] Alg. 2
    A_s, _, lam_s = _form(schedule, s, form)
    A_t, B_t, lam_t = _form(schedule, t, form)
    lam_prev = _at(schedule, t_prev)[2]
    h, r = lam_t - lam_s, (lam_s - lam_prev) / (lam_t - lam_s)
    P_s = _pick(pred_s, form)
    D1 = (P_s - _pick(pred_prev, form)) / r
    phi1 = math.expm1(_hat(h, form))
    return (A_t / A_s) * x - (B_t * phi1) * (P_s + 0.5 * D1)
    # END ASSIGNMENT


def multistep_3_update(schedule, x, t_prev2: float, t_prev: float, s: float, t: float,
                       pred_prev2, pred_prev, pred_s, form: str):
    """Finite differences of P over three past points;  x_t = (A_t/A_s)x − B_t·(φ1·P_s + φ2·D1 + φ3·D2).  [DPM++ reference code, corrected]

    D1 ≈ h·P' and D2 ≈ h²·P'' (both with O(h³) error), matching φ2 = h·φ_2(h) and φ3 = h·φ_3(h) of the
    exact expansion Σ_k h^{k+1} φ_{k+1}(h) P^{(k)}. The DPM-Solver reference code (and diffusers, k-diffusion)
    use D2 = (D1_0 − D1_1)/(r0 + r1) ≈ h²·P''/2 here, which leaves an O(h³) local error and a second-order
    method: without the factor 2, dpm3m+ss and dpm++3m+ss (singlestep first steps, so no lower-order warm-up error)
    measure 2.07–2.55 across the schedules, and tests/test_solvers.py, which asks them for ≥ 2.6, fails on all 16.
    """
    # BEGIN ASSIGNMENT A2.5: the third-order multistep step from three predictions (mind the factor 2 in D2: see the docstring) — see [DPM++] App. B
    A_s, _, lam_s = _form(schedule, s, form)
    A_t, B_t, lam_t = _form(schedule, t, form)
    lam_p1, lam_p2 = _at(schedule, t_prev)[2], _at(schedule, t_prev2)[2]
    h = lam_t - lam_s
    r0, r1 = (lam_s - lam_p1) / h, (lam_p1 - lam_p2) / h
    P_s, P_p1, P_p2 = _pick(pred_s, form), _pick(pred_prev, form), _pick(pred_prev2, form)
    D1_0, D1_1 = (P_s - P_p1) / r0, (P_p1 - P_p2) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = 2.0 * (D1_0 - D1_1) / (r0 + r1)      # ≈ h²·P''; see the docstring
    phi1, phi2, phi3 = _phis(_hat(h, form))
    return (A_t / A_s) * x - B_t * (phi1 * P_s + phi2 * D1 + phi3 * D2)
    # END ASSIGNMENT

# ----------------------------------------------------------------------------
# Samplers: solver(model, x, ts, schedule, callback=None, *, denoise_last=False) → x at ts[-1], or x̂0.
#
# denoise_last=True ends on the clean sample: the last step goes from ts[-2] to σ = 0 instead of to ts[-1]. With
# σ_t = 0 the data-form first-order step x_t = (σ_t/σ_s)·x_s − α_t·expm1(−h)·x̂0_s (h = +∞) is x_t = α_t·x̂0_s, and
# α = 1 at the data end of every schedule in rd.schedules, so the step returns x̂0(x_{ts[-2]}, ts[-2]): one model
# call, as many as the step it replaces (a higher-order step cannot reach λ = +∞).  [DPM++ Eq. 9; EDM's last step]


def _call(callback, i, t, x, pred):
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0_pred": pred[0], "eps_pred": pred[1]})


def _denoised(model, x, s: float, i: int, callback):
    """The last step to σ = 0: x̂0(x_s, s)."""
    pred_s = model(x, s)
    _call(callback, i, s, x, pred_s)
    return pred_s[0]


def _check(order: int, form: str):
    if order not in (1, 2, 3) or form not in FORMS:
        raise ValueError(f"DPM-Solver needs order in (1, 2, 3) and form in {FORMS}; got order={order!r}, form={form!r}")


def singlestep_orders(nfe: int, order: int, denoise_last: bool = False) -> list[int]:
    """Per-step orders of a singlestep solver that spend exactly `nfe` calls.  [DPM §3.4, "DPM-Solver-fast"]

    order 3: [3, …, 3, 2, 1] (nfe ≡ 0 mod 3), [3, …, 3, 1] (≡ 1), [3, …, 3, 2] (≡ 2); order 2: [2, …, 2] or
    [2, …, 2, 1]; order 1: [1] * nfe. With denoise_last the last step must be first order, so a last order o > 1
    becomes o − 1 followed by 1 (the same calls).
    """
    _check(order, "data")
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer ≥ 1; got {nfe!r}")
    q, rem = divmod(nfe, order)
    if order == 3 and rem == 0 and q > 0:
        orders = [3] * (q - 1) + [2, 1]
    else:
        orders = [order] * q + ([rem] if rem else [])
    while denoise_last and orders[-1] > 1:
        orders[-1:] = [orders[-1] - 1, 1]
    return orders


def dpm_singlestep(model, x, ts, schedule, callback=None, *, order: int = 2, form: str = "data",
                   orders=None, denoise_last: bool = False):
    """DPM-Solver-k / DPM-Solver++(kS): `order` model calls per step (or orders[i] in step i).  [DPM Alg. 1–2, DPM++ Alg. 1]"""
    _check(order, form)
    ts = [float(t) for t in ts]
    orders = [order] * (len(ts) - 1) if orders is None else list(orders)
    if len(orders) != len(ts) - 1 or any(k not in (1, 2, 3) for k in orders):
        raise ValueError(f"orders needs one order in (1, 2, 3) per step: {len(ts) - 1} steps, got {orders!r}")
    for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
        if denoise_last and i == len(ts) - 2:
            return _denoised(model, x, s, i, callback)
        pred_s = model(x, s)
        _call(callback, i, s, x, pred_s)
        if orders[i] == 1:
            x = first_order_update(schedule, x, s, t, pred_s, form)
        elif orders[i] == 2:
            x = singlestep_2_update(model, schedule, x, s, t, pred_s, form)
        else:
            x = singlestep_3_update(model, schedule, x, s, t, pred_s, form)
    return x


def dpm_multistep(model, x, ts, schedule, callback=None, *, order: int = 2, form: str = "data",
                  warmup: str = "lower_order", lower_order_final: bool = True, denoise_last: bool = False):
    """DPM-Solver-kM / DPM-Solver++(kM): one model call per step, reusing the last k predictions.  [DPM++ Alg. 2]

    warmup="lower_order" (the reference's choice, NFE = steps): steps 1..k−1 use orders 1..k−1. The first
    step's O(h²) local error then caps the global order at 2 — the 3M tests measure exactly that.
    warmup="singlestep": the first step is the singlestep order-k update (k − 1 extra calls), which keeps
    the full order k.
    lower_order_final (the reference's rule, for fewer than 10 steps): step i of n uses order ≤ n − i, so the last
    step is first order and the one before at most second; large last steps then take no extrapolated differences.
    """
    _check(order, form)
    if warmup not in ("lower_order", "singlestep"):
        raise ValueError(f"unknown warmup {warmup!r}; allowed: 'lower_order', 'singlestep'")
    ts = [float(t) for t in ts]
    n = len(ts) - 1
    preds = []
    for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
        if denoise_last and i == n - 1:
            return _denoised(model, x, s, i, callback)
        preds = (preds + [model(x, s)])[-order:]
        _call(callback, i, s, x, preds[-1])
        k = min(order, n - i) if lower_order_final and n < 10 else order
        if i == 0 and warmup == "singlestep" and k > 1:
            update = singlestep_2_update if k == 2 else singlestep_3_update
            x = update(model, schedule, x, s, t, preds[-1], form)
        elif k == 1 or len(preds) == 1:
            x = first_order_update(schedule, x, s, t, preds[-1], form)
        elif k == 2 or len(preds) == 2:
            x = multistep_2_update(schedule, x, ts[i - 1], s, t, preds[-2], preds[-1], form)
        else:
            x = multistep_3_update(schedule, x, ts[i - 2], ts[i - 1], s, t, *preds, form)
    return x


def velocity(schedule, pred, t: float):
    """PF-ODE drift dx/dt = α'_t·x̂0 + σ'_t·ε̂ (the flow velocity of the pair).  [SDE, RF]"""
    c = schedule(t)
    return c.d_alpha.item() * pred[0] + c.d_sigma.item() * pred[1]


def euler(model, x, ts, schedule, callback=None, *, denoise_last: bool = False):
    """x_t = x_s + (t − s)·v(x_s, s): first order in t, the baseline every few-step method beats."""
    ts = [float(t) for t in ts]
    for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
        if denoise_last and i == len(ts) - 2:
            return _denoised(model, x, s, i, callback)
        pred_s = model(x, s)
        _call(callback, i, s, x, pred_s)
        x = x + (t - s) * velocity(schedule, pred_s, s)
    return x


def heun(model, x, ts, schedule, callback=None, *, denoise_last: bool = False):
    """Euler predictor, trapezoidal corrector: x_t = x_s + (t − s)/2·(v_s + v(x̃_t, t)); 2 calls a step.  [EDM Alg. 1]"""
    ts = [float(t) for t in ts]
    for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
        if denoise_last and i == len(ts) - 2:
            return _denoised(model, x, s, i, callback)
        pred_s = model(x, s)
        _call(callback, i, s, x, pred_s)
        v_s = velocity(schedule, pred_s, s)
        x_pred = x + (t - s) * v_s
        x = x + (0.5 * (t - s)) * (v_s + velocity(schedule, model(x_pred, t), t))
    return x

# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Solver:
    """One entry of the solver table: the step function and what the tests and samplers need to know of it."""
    step: Callable
    order: int                  # the global order of accuracy (what tests/test_solvers.py measures)
    calls_per_step: int = 1     # model calls per step
    min_steps: int = 1          # the fewest steps at which it reaches its order (a multistep solver's start-up)


def _single(order: int, form: str) -> Solver:
    return Solver(partial(dpm_singlestep, order=order, form=form), order, calls_per_step=order)


def _multi(order: int, form: str) -> Solver:
    return Solver(partial(dpm_multistep, order=order, form=form), order, min_steps=order)


TABLE = {
    "euler": Solver(euler, 1),
    "heun": Solver(heun, 2, calls_per_step=2),
    "ddim": _single(1, "noise"),
    "dpm1": _single(1, "noise"),
    "dpm2s": _single(2, "noise"),
    "dpm3s": _single(3, "noise"),
    "dpm2m": _multi(2, "noise"),
    "dpm3m": _multi(3, "noise"),
    "dpm++1": _single(1, "data"),
    "dpm++2s": _single(2, "data"),
    "dpm++3s": _single(3, "data"),
    "dpm++2m": _multi(2, "data"),
    "dpm++3m": _multi(3, "data"),
}
# the table by field; CALLS_PER_STEP and MIN_STEPS list only the entries other than 1 (look up with .get(name, 1))
SOLVERS = {name: s.step for name, s in TABLE.items()}
ORDERS = {name: s.order for name, s in TABLE.items()}
CALLS_PER_STEP = {name: s.calls_per_step for name, s in TABLE.items() if s.calls_per_step > 1}
MIN_STEPS = {name: s.min_steps for name, s in TABLE.items() if s.min_steps > 1}


def get_solver(name: str):
    """The solver function of a name in SOLVERS (a ValueError lists them)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(SOLVERS)}")
    return SOLVERS[name]


def singlestep_order(name: str) -> int | None:
    """The order of a singlestep DPM-Solver name (e.g. 3 for 'dpm++3s'), None for any other solver."""
    solve = get_solver(name)
    return solve.keywords["order"] if getattr(solve, "func", None) is dpm_singlestep else None


def nfe(name: str, steps: int, denoise_last: bool = False) -> int:
    """Number of model evaluations of `steps` steps of solver `name` (the last step one call with denoise_last)."""
    get_solver(name)
    calls = CALLS_PER_STEP.get(name, 1)
    return calls * (steps - 1) + 1 if denoise_last else calls * steps
