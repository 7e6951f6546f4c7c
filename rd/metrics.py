"""Distances between sample sets, for 2D experiments where the target distribution is known.  [RD §4]"""
import numpy as np
import torch
from torch import Tensor


def _check_sets(x: Tensor, y: Tensor):
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two sample sets (N, D) and (M, D); got {tuple(x.shape)} and {tuple(y.shape)}")


def sliced_wasserstein(x: Tensor, y: Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """SW₂(x, y) = sqrt(mean over random unit directions θ of W₂²(θ·x, θ·y)), 1D W₂ by sorting.

    Equal set sizes (the 1D optimal coupling is then the sorted order); fixed seed ⇒ a deterministic number.
    """
    _check_sets(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_wasserstein needs equal set sizes; got {x.shape[0]} and {y.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (np.sort((z.detach().double().cpu() @ theta).T.numpy(), axis=1) for z in (x, y))  # numpy: 5× torch
    return float(np.sqrt(((px - py) ** 2).mean()))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """D²(x, y) = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (V-statistic; ≥ 0, = 0 iff equal laws; Székely & Rizzo)."""
    _check_sets(x, y)
    x, y = x.double().cpu(), y.double().cpu()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()

# ----------------------------------------------------------------------------
# Trajectory diagnostics.  [RD §2.1–2.2, RF]


@torch.no_grad()
def trajectory(model, x, ts, solver_fn, schedule):
    """Run solver_fn along the grid ts, recording every step: (xs (T, B, D) including the end, ts (T,), x̂0s (T−1, B, D))."""
    xs, x0s = [], []
    end = solver_fn(model, x, ts, schedule, callback=lambda d: (xs.append(d["x"]), x0s.append(d["x0_pred"])))
    return torch.stack(xs + [end]), torch.as_tensor(ts, dtype=torch.float64), torch.stack(x0s)


def first_order_error(x0_preds: Tensor) -> float:
    """sqrt(mean ‖x̂0(x_t, t) − mean_t x̂0‖²) / sqrt(mean ‖x̂0‖²) along trajectories, x0_preds (T, B, D).

    0 exactly when the prediction is constant along every path ([RD]'s first-order ODE, where one DPM-Solver-1
    step is exact); a trained teacher's x̂0 drifts from the data mean at t_max to its sample at t_min.
    """
    # BEGIN ASSIGNMENT A3.4: the first-order diagnostic: how far x̂0 moves along each trajectory, relative to its size — see [RD] §2.1
    x0 = x0_preds.double()
    spread = (x0 - x0.mean(0, keepdim=True)).pow(2).sum(-1).mean()
    return (spread / x0.pow(2).sum(-1).mean()).sqrt().item()
    # END ASSIGNMENT


def path_deviation(points: Tensor) -> float:
    """Mean over paths of max_i dist(p_i, chord p_0 → p_T) / ‖p_T − p_0‖, points (T, B, D): 0 for straight paths.

    Apply it to x_t (straight only for FM and VE first-order paths) or to z_t = x_t/α_t (straight for every form).
    """
    p = points.double()
    chord = p[-1] - p[0]                                                                   # (B, D)
    length = chord.norm(dim=-1).clamp_min(1e-300)
    rel = p - p[0]                                                                         # (T, B, D)
    along = (rel * chord).sum(-1, keepdim=True) / length[:, None] ** 2                    # (T, B, 1)
    perp = (rel - along * chord).norm(dim=-1)                                              # (T, B)
    return (perp.max(0).values / length).mean().item()
