"""Prediction types ε, x0, v and flow velocity u, their exact conversions, the denoising loss, and the teacher
forms (schedule + prediction type) by name.  [RD §2, VDM]

Every network in rd predicts one target from (x_t, t). Given x_t = α·x0 + σ·ε, each target is a linear function
of the pair (x0, ε), so every conversion goes through that pair:

    eps:  ε                      x0:    x0
    v:    α·ε − σ·x0             flow:  u = α'·x0 + σ'·ε     (RF: α = 1 − t, σ = t ⇒ u = ε − x0)
    edm:  F = (σ·x0 − α·σ_d²·ε)/(σ_d·N),  N = sqrt(σ² + α²σ_d²)   (EDM's preconditioned output, below)

The edm type is EDM's preconditioning [EDM Table 1, Eq. 7] written for any (α, σ) through z = x_t/α = x0 + r·ε,
r = σ/α: x̂0 = c_skip·z + c_out·F(c_in·x_t) with c_skip = σ_d²/(r² + σ_d²), c_out = r·σ_d/sqrt(r² + σ_d²) and
c_in = 1/N; the plain squared error of F is EDM's loss weighted by λ(σ) = 1/c_out². σ_d = SIGMA_DATA, the data's
standard deviation (0.5 for images in [−1, 1]). The network sees c_in·x_t (net_input), unit variance at every t.

Conversions are exact for any (α, σ): nothing assumes α² + σ² = 1. Each inverse divides by one quantity that can
vanish at an endpoint — α for ε-prediction (α_1 = 0 for FM/cosine), σ for x0-prediction (σ_0 = 0 for VP/FM) —
which is why solvers stop at the schedule's [t_min, t_max] range.
"""
import torch
from torch import Tensor

from .schedules import Coeffs, Schedule

PRED_TYPES = ("eps", "x0", "v", "flow", "edm")
SIGMA_DATA = 0.5        # σ_d of the edm type
LOSSES = ("mse", "huber")   # the prediction's own squared error; pseudo-Huber on x̂0 (the official RD code's)
# A model's form: its schedule (rd.schedules) and prediction type. rd.cifar and train_sd.py take one by name (--form);
# rectified students keep their teacher's form [RD].
FORMS = {                                   # form: (schedule, prediction type)
    "vp-cosine-v": ("vp-cosine", "v"),      # iDDPM's cosine VP schedule, v-prediction
    "vp-sd-eps": ("vp-sd", "eps"),          # Stable Diffusion 1.x: scaled-linear VP, ε-prediction
    "vp-sd-v": ("vp-sd", "v"),              # the same schedule, v-prediction
    "vp-sd-zsnr-v": ("vp-sd-zsnr", "v"),    # Stable Diffusion 2 style: v on the schedule rescaled to zero terminal SNR
    "edm": ("ve", "edm"),                   # EDM: VE, preconditioned network, log-normal noise levels
}
# The recipe a teacher of each form trains with unless told otherwise (--teacher_weight=auto; rd.cifar's --lr=0):
# - the prediction type whose loss weighting it takes (loss_weight; '': the form's own loss): ε's for v on SD's
#   schedule, which gave the better teacher in both pipelines (RESULTS.md); each form's own loss elsewhere, since ε's
#   weight all but stops the training of the noisiest times where α → 0 (cosine, zero terminal SNR) and on EDM's
#   largest σ, where a 1-call sample starts;
# - its peak Adam learning rate on CIFAR-10 (rd.cifar; train_sd.py keeps its own): at 1e-3 EDM diverges and the
#   ε-weighted v teacher can stall (RESULTS.md).
TEACHER_RECIPES = {                         # form: (loss weighted like, peak learning rate)
    "vp-cosine-v": ("", 1e-3),
    "vp-sd-eps": ("", 1e-3),
    "vp-sd-v": ("eps", 5e-4),
    "vp-sd-zsnr-v": ("", 1e-3),
    "edm": ("", 5e-4),
}


def teacher_recipe(form: str, weight: str = "auto", lr: float = 0.0) -> tuple[str, float]:
    """(weight, lr) a `form` teacher trains with: TEACHER_RECIPES' for weight "auto" and lr 0, else those given
    (weight '': the form's own loss; else the prediction type whose loss weighting it takes)."""
    own_weight, own_lr = TEACHER_RECIPES[form]
    return own_weight if weight == "auto" else weight, lr or own_lr


def check_pred_type(pred_type: str) -> str:
    """pred_type itself if it is one of PRED_TYPES, else a ValueError that lists them."""
    if pred_type not in PRED_TYPES:
        raise ValueError(f"unknown prediction type {pred_type!r}; allowed: {', '.join(PRED_TYPES)}")
    return pred_type


def net_time_dtype(x: Tensor) -> torch.dtype:
    """Times go to networks in float32 at least (bf16 would round t = 0.999 to 1.0), float64 with float64 x."""
    return torch.promote_types(x.dtype, torch.float32)


def _bcast(c: Coeffs, like: Tensor) -> Coeffs:
    """Coefficients shaped (B, 1, ..., 1) (or scalars) in the dtype of `like`, ready to multiply a (B, ...) batch."""
    def f(a):
        a = a.to(device=like.device, dtype=like.dtype)
        return a.reshape(a.shape + (1,) * (like.dim() - a.dim())) if a.dim() else a
    return Coeffs(f(c.alpha), f(c.sigma), f(c.d_alpha), f(c.d_sigma))


def _edm_norm(c: Coeffs) -> Tensor:
    """N = sqrt(σ² + α²σ_d²): 1/c_in of the edm type."""
    return (c.sigma ** 2 + (c.alpha * SIGMA_DATA) ** 2).sqrt()


def net_input(x_t: Tensor, c: Coeffs, pred_type: str) -> Tensor:
    """What the network sees: c_in·x_t = x_t/N for the edm type, x_t itself for the others.  [EDM Table 1]"""
    return x_t / _edm_norm(_bcast(c, x_t)) if pred_type == "edm" else x_t


def target_from_pair(x0: Tensor, eps: Tensor, c: Coeffs, pred_type: str) -> Tensor:
    """The regression target of `pred_type` for the pair (x0, ε) at coefficients c.  [VDM, RF, EDM]"""
    c = _bcast(c, x0)
    if pred_type == "edm":
        return (c.sigma * x0 - (c.alpha * SIGMA_DATA ** 2) * eps) / (SIGMA_DATA * _edm_norm(c))
    # BEGIN ASSIGNMENT A1.1: the regression target of each prediction type for a pair (x0, ε) — see [VDM], [RF] and MATH.md §2
    if pred_type == "eps":
        return eps
    if pred_type == "x0":
        return x0
    if pred_type == "v":
        return c.alpha * eps - c.sigma * x0
    if pred_type == "flow":
        return c.d_alpha * x0 + c.d_sigma * eps
    # END ASSIGNMENT
    raise ValueError(f"unknown prediction type {pred_type!r}; allowed: {', '.join(PRED_TYPES)}")


def pair_from_prediction(pred: Tensor, x_t: Tensor, c: Coeffs, pred_type: str) -> tuple[Tensor, Tensor]:
    """(x̂0, ε̂) from a prediction of `pred_type` at x_t.  [VDM, RF]

    eps:  x̂0 = (x_t − σ ε̂)/α                     x0:   ε̂ = (x_t − α x̂0)/σ
    v:    x̂0 = (α x_t − σ v̂)/(α² + σ²),   ε̂ = (σ x_t + α v̂)/(α² + σ²)
    flow: det = α σ' − σ α',  x̂0 = (σ' x_t − σ û)/det,  ε̂ = (α û − α' x_t)/det
    edm:  x̂0 = (σ_d² α x_t)/N² + (σ σ_d/N)·F,  ε̂ = (σ x_t)/N² − (α σ_d/N)·F     (N² = σ² + α²σ_d²)
    """
    c = _bcast(c, x_t)
    if pred_type == "edm":
        norm = _edm_norm(c)
        return ((SIGMA_DATA ** 2 * c.alpha / norm ** 2) * x_t + (c.sigma * SIGMA_DATA / norm) * pred,
                (c.sigma / norm ** 2) * x_t - (c.alpha * SIGMA_DATA / norm) * pred)
    # BEGIN ASSIGNMENT A1.2: (x̂0, ε̂) from a prediction of each type, exact for any (α, σ) — see the docstring, [VDM], [RF]
    a, s = c.alpha, c.sigma
    if pred_type == "eps":
        return (x_t - s * pred) / a, pred
    if pred_type == "x0":
        return pred, (x_t - a * pred) / s
    if pred_type == "v":
        norm = a * a + s * s
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    if pred_type == "flow":
        det = a * c.d_sigma - s * c.d_alpha
        return (c.d_sigma * x_t - s * pred) / det, (a * pred - c.d_alpha * x_t) / det
    # END ASSIGNMENT
    raise ValueError(f"unknown prediction type {pred_type!r}; allowed: {', '.join(PRED_TYPES)}")


def convert(pred: Tensor, x_t: Tensor, c: Coeffs, src: str, dst: str) -> Tensor:
    """pred_dst = target_dst(pair_src(pred, x_t)): a prediction of type `src` as type `dst`, exact, through the pair
    (x̂0, ε̂).  [MATH.md (2.3)]"""
    check_pred_type(dst)
    return target_from_pair(*pair_from_prediction(pred, x_t, c, src), c, dst)


def x0_gain(c: Coeffs, pred_type: str) -> Tensor:
    """|∂target/∂x0| at a fixed x_t — ε: α/σ, x0: 1, v: (α² + σ²)/σ, flow: |α'σ − σ'α|/σ, edm: 1/c_out = N/(σ σ_d).

    How far a prediction of `pred_type` moves per unit of x̂0 error (the same x_t, a different x̂0).
    """
    a, s = c.alpha, c.sigma
    if pred_type == "eps":
        return a / s
    if pred_type == "x0":
        return torch.ones_like(a)
    if pred_type == "v":
        return (a * a + s * s) / s
    if pred_type == "flow":
        return (c.d_alpha * s - c.d_sigma * a).abs() / s
    if pred_type == "edm":
        return _edm_norm(c) / (s * SIGMA_DATA)
    raise ValueError(f"unknown prediction type {pred_type!r}; allowed: {', '.join(PRED_TYPES)}")


def loss_weight(c: Coeffs, pred_type: str, like: str) -> Tensor:
    """(gain_like / gain_pred)²: the per-sample weight that turns a `pred_type` network's squared error into that
    of a `like` network with the same x̂0, e.g. ((α² + σ²)/α)² for an ε-network weighted like v.

    The network, its schedule and its prediction type stay as they are: only how much each t counts changes. On
    SD's schedule the plain ε-loss weighs an x̂0 error at t = 1 by (α/σ)² = 0.0047, v's loss by 1/σ² ≈ 1. Where α
    reaches 0 (flow matching, cosine) ε → v weights grow without bound near t = 1 (≈ 1e11 at FM's t_max), and a few
    samples then carry a batch: it suits schedules with α_1 > 0 such as VP's discrete ones.
    """
    return (x0_gain(c, like) / x0_gain(c, pred_type)) ** 2


class Predictor:
    """net(x_t, t) of one prediction type, seen by the solvers as (x_t, t) ↦ (x̂0, ε̂).

    net: any callable (x (B, ...), t (B,) float) → prediction (B, ...). The network may run in bf16 (autocast);
    its output is converted in float32 at least (float64 when x is float64): near t_max, x̂0 = (x_t − σ ε̂)/α
    with α = 0.07 (SD) cancels badly in bf16.
    """

    def __init__(self, net, pred_type: str, schedule: Schedule):
        self.net, self.pred_type, self.schedule = net, check_pred_type(pred_type), schedule

    def __call__(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t_batch = t.expand(x.shape[0]) if t.dim() == 0 else t
        work, c = net_time_dtype(x), self.schedule(t_batch)
        pred = self.net(net_input(x, c, self.pred_type), t_batch.to(work)).to(work)
        return pair_from_prediction(pred, x.to(work), c, self.pred_type)


def denoising_loss(net, schedule: Schedule, x0: Tensor, eps: Tensor, t: Tensor, pred_type: str,
                   weight: Tensor | None = None, weight_like: str | None = None, loss: str = "mse",
                   huber_c: float = 1e-3) -> Tensor:
    """‖net(α_t x0 + σ_t ε, t) − target(x0, ε)‖², averaged.  [RD Alg. 4; DDPM]

    The pair (x0, ε) is explicit: standard training draws them independently, rectified training passes the
    teacher's (ε, x̂0) pairs — the same call. `weight` (B,) multiplies each sample's mean error; `weight_like` (a
    prediction type) multiplies it by loss_weight(c, pred_type, weight_like), normalised to mean 1 over the batch
    (the loss keeps the scale of the plain one; under torchrun, over each process's batch).

    loss="huber": the mean of sqrt((x̂0 − x0)² + c²) − c over the elements, x̂0 the network's clean estimate and
    c = huber_c — the pseudo-Huber loss in x0 space of the official Rectified Diffusion code (c = 0.001 there). The
    network keeps its prediction type; only the loss is read through x̂0, so every t counts alike in image space.
    An ε-network's x̂0 = (x_t − σ·ε̂)/α grows without bound where α → 0 (cosine, flow matching near t = 1): there
    use it with v, x0, flow or edm networks.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    # shapes only: checking values would cost a device sync every training step (schedule(t) checks CPU times)
    if x0.shape != eps.shape:
        raise ValueError(f"denoising_loss: x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have one shape (one "
                         "noise per example; a smaller eps would broadcast silently)")
    if not torch.is_tensor(t) or t.shape not in ((), x0.shape[:1]):
        raise ValueError(f"denoising_loss: t must be a tensor of one time per example, shape ({x0.shape[0]},); got "
                         f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    c = schedule(t)
    if weight_like is not None:
        w = loss_weight(c, pred_type, check_pred_type(weight_like)).to(x0.device, torch.float32)
        w = w / w.mean()
        weight = w if weight is None else weight * w
    cb = _bcast(c, x0)
    x_t = cb.alpha * x0 + cb.sigma * eps
    pred = net(net_input(x_t, c, pred_type), t.to(net_time_dtype(x0)))
    if loss == "huber":
        work = net_time_dtype(x0)
        x0_hat, _ = pair_from_prediction(pred.to(work), x_t.to(work), c, pred_type)
        err = ((x0_hat - x0.to(work)) ** 2 + huber_c ** 2).sqrt() - huber_c
    else:
        err = (pred.float() - target_from_pair(x0, eps, c, pred_type).float()) ** 2
    err = err.reshape(err.shape[0], -1).mean(1)
    return (err if weight is None else err * weight).mean()
