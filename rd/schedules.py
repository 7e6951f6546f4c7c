"""The schedule family  x_t = α_t·x0 + σ_t·ε,  t ∈ [0, 1],  t = 0 data, t = 1 noise.  [VDM, DPM, RD §2]

Every kind of diffusion model in rd is one of these schedules. A schedule gives, in float64:
  α_t, σ_t, their t-derivatives, the log-SNR λ_t = log(α_t/σ_t) (strictly decreasing), its inverse t(λ),
  the usable sampling range [t_min, t_max] (λ finite on it) and the default training-time distribution.

    sched = get_schedule("vp-ddpm")
    c = sched(t)                      # Coeffs(alpha, sigma, d_alpha, d_sigma), float64
    lam = sched.lam(t); t_back = sched.inverse_lambda(lam)

Nothing here assumes α² + σ² = 1. Endpoints: σ_0 = 0 for VP, sub-VP and FM (λ_0 = +∞), α_1 = 0 for FM and
cosine (λ_1 = −∞); the sampling range stops short of those points, and derivatives that are infinite there
(VP's dσ/dt at t = 0) come out as ±inf, not as a silently clipped number.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Coeffs:
    """α_t, σ_t and their t-derivatives at one or many times (float64 tensors shaped like t)."""
    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def as_time(t, device=None) -> Tensor:
    """t as a float64 tensor; a ValueError if any t is outside [0, 1] (checked for CPU tensors and numbers)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if t.device.type == "cpu" and bool(((t < 0) | (t > 1) | t.isnan()).any()):
        nan, ok = int(t.isnan().sum()), t[~t.isnan()]
        raise ValueError("t must lie in [0, 1] (t = 0 data, t = 1 noise); got "
                         + (f"{nan} NaN of {t.numel()} values" if nan else "")
                         + (" and " if nan and ok.numel() else "")
                         + (f"values in [{ok.min().item():.6g}, {ok.max().item():.6g}]" if ok.numel() else ""))
    return t


class Schedule:
    """Base class: subclasses define log α_t, log σ_t, (dα/dt, dσ/dt) and t(λ); the rest follows."""
    name = "base"
    t_min = 0.0   # sampling ends here (first discrete step, or ε)
    t_max = 1.0   # sampling starts here, x_{t_max} ≈ σ_{t_max}·ε

    def log_alpha(self, t: Tensor) -> Tensor:
        """log α_t of x_t = α_t·x0 + σ_t·ε, for float64 t in [0, 1] (t's shape).  [MATH.md (1.1)]"""
        raise NotImplementedError

    def log_sigma(self, t: Tensor) -> Tensor:
        """log σ_t, for float64 t in [0, 1] (t's shape); −∞ where σ_t = 0.  [MATH.md (1.1), (1.4)]"""
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt) at float64 t (each t's shape).  [MATH.md (1.6)]"""
        raise NotImplementedError

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        """t(λ): the time where λ_t = log(α_t/σ_t) equals lam, float64 (lam's shape).  [MATH.md (1.2), (1.7)]"""
        raise NotImplementedError

    def sample_t(self, n: int, generator=None, device=None) -> Tensor:
        """Default training times: uniform on [t_min, t_max]."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    def alpha(self, t) -> Tensor:
        return self.log_alpha(as_time(t)).exp()

    def sigma(self, t) -> Tensor:
        return self.log_sigma(as_time(t)).exp()

    def lam(self, t) -> Tensor:
        """λ_t = log α_t − log σ_t."""
        t = as_time(t)
        return self.log_alpha(t) - self.log_sigma(t)

    def __call__(self, t) -> Coeffs:
        """(α_t, σ_t, dα/dt, dσ/dt) of x_t = α_t·x0 + σ_t·ε at times t (float64, t's shape).  [VDM; MATH.md (1.1)]"""
        t = as_time(t)
        d_alpha, d_sigma = self.derivatives(t)
        return Coeffs(self.log_alpha(t).exp(), self.log_sigma(t).exp(), d_alpha, d_sigma)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, t_min={self.t_min:g}, t_max={self.t_max:g})"


def _vp_log_sigma(log_alpha: Tensor) -> Tensor:
    """σ = sqrt(1 − α²), in logs: ½·log(−expm1(2 log α))."""
    # BEGIN ASSIGNMENT A1.3: VP's σ from α (α² + σ² = 1), in logs and without cancellation near α = 1 — see [VDM] eq. (2)
    return 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))
    # END ASSIGNMENT


def _vp_log_alpha_from_lambda(lam: Tensor) -> Tensor:
    """α² = 1/(1 + e^{−2λ})  ⇒  log α = −½·softplus(−2λ)."""
    # BEGIN ASSIGNMENT A1.4: VP's log α from the log-SNR λ = log(α/σ) — see [DPM] §3.1 (the inverse t(λ) builds on it)
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)
    # END ASSIGNMENT


def _vp_derivatives(log_alpha: Tensor, d_log_alpha: Tensor) -> tuple[Tensor, Tensor]:
    """dα = α·(d log α);  σ² = 1 − α²  ⇒  dσ = −α·dα/σ  (−inf at σ = 0)."""
    # BEGIN ASSIGNMENT A1.5: VP's dα/dt and dσ/dt from d(log α)/dt — differentiate α² + σ² = 1
    alpha = log_alpha.exp()
    d_alpha = alpha * d_log_alpha
    return d_alpha, -alpha * d_alpha / _vp_log_sigma(log_alpha).exp()
    # END ASSIGNMENT

# ----------------------------------------------------------------------------


class VPDiscrete(Schedule):
    """DDPM: ᾱ_i = ∏_{j≤i}(1 − β_j), i = 1..N at t_i = i/N; log α piecewise linear in t.  [DPM]

    beta="linear": β = linspace(1e-4, 0.02, N) (DDPM); beta="scaled_linear": β = linspace(√0.00085, √0.012, N)²
    (Stable Diffusion). A knot ᾱ_0 = 1 at t = 0 closes the interpolation; t(λ) inverts it exactly.
    zero_snr=True rescales √ᾱ to end at 0, √ᾱ ↦ (√ᾱ − √ᾱ_N)·√ᾱ_1/(√ᾱ_1 − √ᾱ_N), so that training sees pure
    noise at t = 1 and sampling starts from what it trained on [Lin et al. 2024, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Alg. 1]; ᾱ_N is then set to 2⁻²⁴ (λ_1 = −8.3, as diffusers samples it) to keep λ
    finite.
    """

    def __init__(self, beta: str = "linear", n: int = 1000, zero_snr: bool = False):
        if beta == "linear":
            betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
        elif beta == "scaled_linear":
            betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"unknown beta schedule {beta!r}; allowed: 'linear', 'scaled_linear'")
        self.name = {"linear": "vp-ddpm", "scaled_linear": "vp-sd"}[beta] + ("-zsnr" if zero_snr else "")
        self.n, self.betas, self.zero_snr = n, betas, zero_snr
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)                                      # ᾱ_1..ᾱ_N
        if zero_snr:
            a = self.alphas_cumprod.sqrt()
            a = (a - a[-1]) * a[0] / (a[0] - a[-1])
            self.alphas_cumprod = torch.cat([a[:-1] ** 2, torch.full((1,), 2.0 ** -24, dtype=torch.float64)])
        self.log_alpha_knots = torch.cat([torch.zeros(1, dtype=torch.float64),
                                          0.5 * self.alphas_cumprod.log()])                       # (N+1,)
        self.t_min, self.t_max = 1.0 / n, 1.0

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        knots = self.log_alpha_knots.to(t.device)
        i = (t * self.n).floor().long().clamp(0, self.n - 1)
        return i, knots

    def log_alpha(self, t):
        i, knots = self._segment(t)
        return knots[i] + (t * self.n - i) * (knots[i + 1] - knots[i])

    def log_sigma(self, t):
        return _vp_log_sigma(self.log_alpha(t))

    def derivatives(self, t):
        i, knots = self._segment(t)
        return _vp_derivatives(self.log_alpha(t), self.n * (knots[i + 1] - knots[i]))

    def inverse_lambda(self, lam):
        log_alpha = _vp_log_alpha_from_lambda(torch.as_tensor(lam, dtype=torch.float64))
        knots = self.log_alpha_knots.to(log_alpha.device)
        i = (torch.searchsorted(-knots, -log_alpha.contiguous()) - 1).clamp(0, self.n - 1)
        return (i + (log_alpha - knots[i]) / (knots[i + 1] - knots[i])) / self.n

    def sample_t(self, n, generator=None, device=None):
        """Uniform over the N discrete steps t = i/N."""
        i = torch.randint(1, self.n + 1, (n,), generator=generator, device=device)
        return i.double() / self.n

# ----------------------------------------------------------------------------


class VPLinear(Schedule):
    """log α_t = −¼t²(β1 − β0) − ½tβ0,  σ_t = sqrt(1 − α_t²).  [SDE, DPM]"""
    name = "vp-linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3):
        self.beta_0, self.beta_1, self.t_min = beta_0, beta_1, t_min

    def log_alpha(self, t):
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def log_sigma(self, t):
        return _vp_log_sigma(self.log_alpha(t))

    def derivatives(self, t):
        return _vp_derivatives(self.log_alpha(t), -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0)

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Root of ¼(β1−β0)t² + ½β0·t + log α = 0, written as −2c/(b + sqrt(b² − 4ac)) (no cancellation)."""
        a, b = 0.25 * (self.beta_1 - self.beta_0), 0.5 * self.beta_0
        return -2.0 * log_alpha / (b + torch.sqrt(b * b - 4.0 * a * log_alpha))

    def inverse_lambda(self, lam):
        return self.t_from_log_alpha(_vp_log_alpha_from_lambda(torch.as_tensor(lam, dtype=torch.float64)))

# ----------------------------------------------------------------------------


class SubVP(VPLinear):
    """α_t as VP-linear, σ_t = 1 − α_t².  [SDE]"""
    name = "subvp"

    def log_sigma(self, t):
        return torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def derivatives(self, t):
        d_alpha, _ = super().derivatives(t)
        return d_alpha, -2.0 * self.log_alpha(t).exp() * d_alpha

    def inverse_lambda(self, lam):
        """α/(1 − α²) = e^λ  ⇒  α = 2e^λ / (1 + sqrt(1 + 4e^{2λ}))."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        log_alpha = math.log(2.0) + lam - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        return self.t_from_log_alpha(log_alpha)

# ----------------------------------------------------------------------------


class VPCosine(Schedule):
    """α_t = f(t)/f(0), f(t) = cos(π/2·(t + s)/(1 + s)), s = 0.008; σ_t = sqrt(1 − α_t²).  [iDDPM, DPM]

    α_1 = 0 exactly, so sampling starts at t_max = 0.9946 as in the DPM-Solver reference.
    """
    name = "vp-cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self.log_f0 = math.log(math.cos(math.pi / 2 * s / (1 + s)))

    def _angle(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def log_alpha(self, t):
        return torch.log(torch.cos(self._angle(t))) - self.log_f0

    def log_sigma(self, t):
        return _vp_log_sigma(self.log_alpha(t))

    def derivatives(self, t):
        return _vp_derivatives(self.log_alpha(t), -torch.tan(self._angle(t)) * math.pi / (2 * (1 + self.s)))

    def inverse_lambda(self, lam):
        log_alpha = _vp_log_alpha_from_lambda(torch.as_tensor(lam, dtype=torch.float64))
        return torch.arccos(torch.exp(log_alpha + self.log_f0)) * 2 * (1 + self.s) / math.pi - self.s

# ----------------------------------------------------------------------------


class VE(Schedule):
    """α_t = 1, σ_t = σ_min·(σ_max/σ_min)^t: EDM's σ range on a geometric clock.  [SDE, EDM]

    Training draws ln σ ~ N(P_mean, P_std²) (EDM), clipped to [σ_min, σ_max]; EDM's ρ = 7 grid is a step grid
    (rd.sampling.get_grid), not a property of the schedule.
    """
    name = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, p_mean: float = -1.2, p_std: float = 1.2):
        self.sigma_min, self.sigma_max, self.p_mean, self.p_std = sigma_min, sigma_max, p_mean, p_std
        self.log_ratio = math.log(sigma_max / sigma_min)

    def log_alpha(self, t):
        return 0.0 * t     # (not zeros_like: keeps autograd's view of t)

    def log_sigma(self, t):
        return math.log(self.sigma_min) + t * self.log_ratio

    def derivatives(self, t):
        return torch.zeros_like(t), self.log_ratio * self.log_sigma(t).exp()

    def inverse_lambda(self, lam):
        """t(λ) = (−λ − log σ_min)/log(σ_max/σ_min), float64.  [EDM; MATH.md (1.7)]"""
        return (-torch.as_tensor(lam, dtype=torch.float64) - math.log(self.sigma_min)) / self.log_ratio

    def sample_t(self, n, generator=None, device=None):
        """EDM's training noise levels: log σ ~ N(p_mean, p_std²), as t clipped to [0, 1] (n,), float64.  [EDM]"""
        log_sigma = self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64, device=device)
        return ((log_sigma - math.log(self.sigma_min)) / self.log_ratio).clamp(0.0, 1.0)

# ----------------------------------------------------------------------------


class FlowMatching(Schedule):
    """α_t = 1 − t, σ_t = t: rectified flow is one member of the family.  [RF]"""
    name = "fm"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t):
        return torch.log1p(-t)

    def log_sigma(self, t):
        return torch.log(t)

    def derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    def inverse_lambda(self, lam):
        """t(λ) = sigmoid(−λ), float64.  [RF; MATH.md (1.7)]"""
        # BEGIN ASSIGNMENT A1.6: flow matching's t(λ): invert λ = log((1 − t)/t) — see [RF] and MATH.md §1
        return torch.sigmoid(-torch.as_tensor(lam, dtype=torch.float64))
        # END ASSIGNMENT

    def sample_t(self, n, generator=None, device=None):
        """Uniform on [0, 1], as rectified flow trains."""
        return torch.rand(n, generator=generator, dtype=torch.float64, device=device)

# ----------------------------------------------------------------------------

SCHEDULES = {
    "vp-ddpm": lambda: VPDiscrete("linear"),
    "vp-sd": lambda: VPDiscrete("scaled_linear"),
    "vp-sd-zsnr": lambda: VPDiscrete("scaled_linear", zero_snr=True),
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "subvp": SubVP,
    "ve": VE,
    "fm": FlowMatching,
}


def get_schedule(name: str) -> Schedule:
    """A schedule by name; a ValueError lists the allowed names."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()


def schedule_params(schedule: Schedule) -> dict:
    """The schedule's name and scalar settings, what tells two schedules apart: VE(sigma_max=1) is not VE(), and
    their pairs are not shared (rd.rectify records these in a pair directory's manifest)."""
    return {k: v for k, v in vars(schedule).items() if isinstance(v, (int, float, str))} | {"name": schedule.name}


def lognormal_t(schedule: Schedule, n: int, generator=None, device=None, p_mean: float = -1.2,
                p_std: float = 1.2) -> Tensor:
    """EDM's log-normal noise levels for any schedule: log(σ/α) ~ N(p_mean, p_std²), mapped to t by t(λ), λ = −log(σ/α),
    and clamped to [t_min, t_max].  [EDM §5]

    σ/α is the noise level of z = x/α = x0 + (σ/α)·ε, EDM's σ, so on VE (α = 1) this is VE's own sample_t. On a VP
    schedule it puts most training where σ/α ∈ [0.1, 1]: mid-range noise, where the loss is hardest to lower.
    """
    log_r = p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64, device=device)
    return schedule.inverse_lambda(-log_r).clamp(schedule.t_min, schedule.t_max)


def late_t(schedule: Schedule, n: int, generator=None, device=None) -> Tensor:
    """t = t_max − (t_max − t_min)·u², u ~ U(0, 1): density ∝ (t_max − t)^(−1/2) on [t_min, t_max], float64.

    Training times weighted towards t_max, where a one-call sampler queries the network and a two-call sampler
    takes its first step; E[t] = t_max − (t_max − t_min)/3 and P(t > t_max − δ·(t_max − t_min)) = √δ.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    return schedule.t_max - (schedule.t_max - schedule.t_min) * u.square()
