"""Distances between sample sets, for 2D experiments where the target distribution is known.  [PAPER §4]"""
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
    px, py = (z.double().cpu() @ theta for z in (x, y))
    return ((px.sort(0).values - py.sort(0).values) ** 2).mean().sqrt().item()


def energy_distance(x: Tensor, y: Tensor) -> float:
    """D²(x, y) = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (V-statistic; ≥ 0, = 0 iff equal laws).  [Székely]"""
    _check_sets(x, y)
    x, y = x.double().cpu(), y.double().cpu()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()
