"""A time-conditioned MLP for 2D data and the training loop shared by teachers and rectified students.

    net = TimeMLP(schedule, pred_type="eps")
    ema_net, losses = train_toy(net, schedule, "eps", independent_batches(mixture, schedule), ToyTrainConfig())

The loop is the standard denoising loss of rd.predictions on (x0, ε, t) batches: a teacher gets independent
(x0, ε) (`independent_batches`), a rectified student gets the teacher's pairs (rd.rectify.pair_batches). That is
the whole difference between training and Rectified Diffusion training.  [RD Alg. 4]
"""
import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .ema import EMA
from .io import atomic_save
from .predictions import denoising_loss
from .schedules import Schedule


class TimeMLP(nn.Module):
    """F(c_in·x_t, emb(t)): an MLP whose input is scaled to unit variance on every schedule.  [EDM Table 1]

    c_in = 1/sqrt(α² σ_d² + σ²) (VE's σ reaches 80; FM's x_t stays O(1)); the output is the prediction of
    `pred_type` itself. (EDM's c_skip/c_out output scaling for x0-prediction, tried here on the 2D ring,
    stalled on the Gaussian denoiser F ≡ 0 in 4 runs of 5, so the toy model leaves it out.)
    """

    def __init__(self, schedule: Schedule, pred_type: str = "eps", dim: int = 2, width: int = 256, depth: int = 3,
                 n_freq: int = 16, sigma_data: float = 1.0):
        super().__init__()
        self.schedule, self.pred_type, self.sigma_data = schedule, pred_type, sigma_data
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), n_freq)), persistent=False)
        layers, d_in = [], dim + 2 * n_freq
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, t):
        c = self.schedule(t)
        c_in = (c.alpha ** 2 * self.sigma_data ** 2 + c.sigma ** 2).rsqrt().float()[:, None]   # (B, 1)
        angle = t.float()[:, None] * self.freqs                                               # (B, n_freq)
        return self.net(torch.cat([x.float() * c_in, angle.sin(), angle.cos()], 1))


@dataclass
class ToyTrainConfig:
    steps: int = 3000        # optimiser steps
    batch: int = 1024        # samples per step
    lr: float = 1e-3         # Adam learning rate, cosine-decayed to 0
    ema_decay: float = 0.995  # EMA of the weights; the EMA copy is returned
    seed: int = 0            # seeds the batches (the net's init is the caller's)
    weight_like: str | None = None   # a prediction type: weigh the loss as its loss (rd.predictions.loss_weight)


def independent_batches(mixture, schedule: Schedule):
    """Standard diffusion training data: x0 from the data, ε ~ N(0, I) independently, t from the schedule."""
    def batch(n, generator):
        x0 = mixture.sample(n, generator).float()
        return x0, torch.randn(x0.shape, generator=generator), schedule.sample_t(n, generator)
    return batch


def train_toy(net: TimeMLP, schedule: Schedule, pred_type: str, batches, cfg: ToyTrainConfig = ToyTrainConfig(),
              desc: str = "train"):
    """Minimise the denoising loss on batches(n, generator) → (x0, ε, t). Returns (EMA model, loss per step)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    net.train().requires_grad_(True)      # a student starts from a (frozen) EMA teacher
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)))
    ema, losses = EMA(net, cfg.ema_decay), []
    for _ in tqdm(range(cfg.steps), desc=desc, leave=False, mininterval=1.0):
        x0, eps, t = batches(cfg.batch, generator)
        loss = denoising_loss(net, schedule, x0, eps, t, pred_type, weight_like=cfg.weight_like)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {len(losses)}; lower the "
                                     f"learning rate (now {cfg.lr}) or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(net)
        losses.append(loss.item())
    net.eval()
    return ema.model, losses


def make_toy(schedule: Schedule, pred_type: str, sigma_data: float, width: int = 256, depth: int = 3) -> TimeMLP:
    """A fresh 2D model; `toy_config` records what rebuilds it."""
    return TimeMLP(schedule, pred_type, dim=2, width=width, depth=depth, sigma_data=sigma_data)


def toy_config(net: TimeMLP) -> dict:
    return {"schedule": net.schedule.name, "pred_type": net.pred_type, "sigma_data": net.sigma_data,
            "width": net.net[0].out_features, "depth": len(net.net) // 2}


def save_toy(net: TimeMLP, path):
    """A plain checkpoint dict {config, model}, written atomically."""
    atomic_save({"config": toy_config(net), "model": net.state_dict()}, path)


def load_toy(path) -> TimeMLP:
    from .schedules import get_schedule
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    net = make_toy(get_schedule(cfg["schedule"]), cfg["pred_type"], cfg["sigma_data"], cfg["width"], cfg["depth"])
    net.load_state_dict(ckpt["model"])
    return net.eval().requires_grad_(False)


@torch.no_grad()
def few_step_distances(net, schedule: Schedule, pred_type: str, noise, target, nfes=(1, 2, 4, 25)) -> dict:
    """Sliced-W₂ to `target` after k model calls: DPM-Solver++(1) for k = 1, DPM-Solver++(2M) with k steps else."""
    from .metrics import sliced_wasserstein
    from .sampling import sample, solver_for
    return {k: sliced_wasserstein(sample(net, noise, schedule, pred_type, solver_for(k), k),
                                  target) for k in nfes}
