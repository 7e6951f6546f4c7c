"""Gaussian mixtures: data with an exact denoiser, the test oracle of rd.  [VDM, SDE]

For x0 ~ Σ_k π_k N(μ_k, s_k² I) and x_t = α x0 + σ ε, with v_k = α² s_k² + σ²:
    p(x_t) = Σ_k π_k N(x_t; α μ_k, v_k I),      w_k(x_t) ∝ π_k N(x_t; α μ_k, v_k I)   (softmax of log-densities)
    E[x0 | x_t] = Σ_k w_k·(μ_k + α s_k²/v_k·(x_t − α μ_k)),     E[ε | x_t] = Σ_k w_k·σ/v_k·(x_t − α μ_k).
Both come out without dividing by α or σ, so the oracle is exact at every t, and α·E[x0|x_t] + σ·E[ε|x_t] = x_t.
`mixture.net(schedule, pred_type)` is the best possible "pretrained model" of any schedule and prediction type.
"""
import math

import torch
from torch import Tensor

from .predictions import check_pred_type, net_input, target_from_pair
from .schedules import Coeffs, Schedule


class GaussianMixture:
    """Isotropic mixture: weights (K,), means (K, D), stds (K,) — any dimension D, float64 by default."""

    def __init__(self, weights, means, stds, dtype=torch.float64):
        self.weights = torch.as_tensor(weights, dtype=dtype)
        self.means = torch.as_tensor(means, dtype=dtype)
        self.stds = torch.as_tensor(stds, dtype=dtype)
        k, self.dim = self.means.shape
        if self.weights.shape != (k,) or self.stds.shape != (k,) or bool((self.stds < 0).any()):
            raise ValueError(f"need weights (K,), means (K, D), stds (K,) ≥ 0; got {tuple(self.weights.shape)}, "
                             f"{tuple(self.means.shape)}, {tuple(self.stds.shape)}")
        self.weights = self.weights / self.weights.sum()

    def sample(self, n: int, generator=None) -> Tensor:
        """n exact samples, (n, D)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * noise

    def _components(self, x_t: Tensor, c: Coeffs):
        """Per-component log π_k N(x_t; α μ_k, v_k I) (B, K), residuals x_t − α μ_k (B, K, D), v_k (B, K), α, σ (B,)."""
        a, s = (z.to(x_t.dtype).expand(x_t.shape[0]) for z in (c.alpha, c.sigma))
        mu, std, pi = (m.to(x_t) for m in (self.means, self.stds, self.weights))
        v = a[:, None] ** 2 * std ** 2 + s[:, None] ** 2                                     # (B, K)
        resid = x_t[:, None, :] - a[:, None, None] * mu                                       # (B, K, D)
        log_p = pi.log() - 0.5 * self.dim * torch.log(2 * math.pi * v) - 0.5 * (resid ** 2).sum(-1) / v
        return log_p, resid, v, a, s

    def posterior(self, x_t: Tensor, c: Coeffs) -> tuple[Tensor, Tensor]:
        """(E[x0 | x_t], E[ε | x_t]) exactly, for x_t (B, D) at coefficients c (scalars or (B,))."""
        log_p, resid, v, a, s = self._components(x_t, c)
        w = torch.softmax(log_p, dim=1)[..., None]                                            # (B, K, 1)
        gain_x0 = (a[:, None] * self.stds.to(x_t) ** 2 / v)[..., None]
        x0 = (w * (self.means.to(x_t) + gain_x0 * resid)).sum(1)
        eps = (w * (s[:, None] / v)[..., None] * resid).sum(1)
        return x0, eps

    def log_prob(self, x_t: Tensor, c: Coeffs) -> Tensor:
        """log p_t(x_t), (B,): the exact marginal density at coefficients c."""
        return torch.logsumexp(self._components(x_t, c)[0], dim=1)

    def net(self, schedule: Schedule, pred_type: str = "eps"):
        """The exact denoiser as a network (net_input(x_t), t) ↦ prediction of `pred_type` (for the edm type the
        network sees c_in·x_t, as every edm network does)."""
        check_pred_type(pred_type)

        def net(x_in, t):
            c = schedule(t)
            x_t = x_in / net_input(torch.ones_like(x_in), c, pred_type)      # undo c_in (1 for the other types)
            return target_from_pair(*self.posterior(x_t, c), c, pred_type)
        return net


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """k equal modes on a circle: the 2D data of the tutorials and tests."""
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return GaussianMixture(torch.ones(k), radius * torch.stack([angle.cos(), angle.sin()], 1), torch.full((k,), std))
