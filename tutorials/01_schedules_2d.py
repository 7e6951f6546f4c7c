# %% [markdown]
# # 01 — One forward process, many "kinds" of diffusion, on 2D data
#
# Every diffusion model in rd is `x_t = α_t·x0 + σ_t·ε` with t = 0 data and t = 1 noise (MATH.md §1). We
# 1. plot α, σ and the log-SNR λ of every schedule of the family;
# 2. reproduce [RD] Fig. 3: *first-order* paths (a fixed pair (x0, ε)) are straight in x_t for FM and VE
#    but curved for VP/DDPM and sub-VP — and straight for all of them as z_t = x_t/α_t against r_t = σ_t/α_t;
# 3. train one teacher per form (VP on SD's schedule with ε and with v, sub-VP with ε, VE/EDM with x0, FM with
#    velocity) and show that their sampled trajectories bend: trained models are not first-order.
#
# Run: `python tutorials/01_schedules_2d.py` (2 to 5 min on 2 CPU cores). `RD_SMOKE=1` shrinks it to a few
# seconds (the tests run that). Figures and the teachers go to `runs/tutorials/` (used by tutorial 02).

# %% Setup
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from rd.cli import smoke_mode
from rd.dist import named_noise
from rd.metrics import first_order_error, path_deviation, sliced_wasserstein, trajectory
from rd.mixture import ring_mixture
from rd.predictions import Predictor
from rd.sampling import get_grid
from rd.schedules import SCHEDULES, get_schedule
from rd.solvers import SOLVERS
from rd.toy import ToyTrainConfig, few_step_distances, independent_batches, make_toy, save_toy, train_toy

# %% Config
SMOKE = smoke_mode()
OUT = Path(os.environ.get("RD_OUT", "runs/tutorials-smoke" if SMOKE else "runs/tutorials"))
TEACHERS = {                               # label → (schedule, prediction type)
    "VP/eps": ("vp-sd", "eps"),            # Stable Diffusion's discrete scaled-linear VP schedule, ε-prediction
    "VP/v": ("vp-sd", "v"),                # the same schedule, v-prediction
    "subVP/eps": ("subvp", "eps"),
    "VE/x0": ("ve", "x0"),                 # EDM's σ range, data prediction
    "FM/flow": ("fm", "flow"),             # rectified flow's form, velocity prediction
}
TRAIN_STEPS = 30 if SMOKE else 4000        # teacher optimiser steps
BATCH = 256 if SMOKE else 1024             # samples per step
LR = 1e-3                                  # Adam, cosine-decayed
N_EVAL = 250 if SMOKE else 4000            # samples for distances
N_PATHS = 24                               # trajectories drawn per panel
R_LATE = 2.0                               # path deviations are measured where r_t = σ_t/α_t ≤ R_LATE
SEED = 0

# %% Data: 8 Gaussians (std 0.2) on a circle of radius 2, with an exact denoiser (rd.mixture)
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(SEED)
mixture = ring_mixture(k=8, radius=2.0, std=0.2)
SIGMA_DATA = mixture.sample(100_000, torch.Generator().manual_seed(SEED)).std().item()

# %% 1. The schedules side by side
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for name in SCHEDULES:
    s = get_schedule(name)
    t = torch.linspace(s.t_min, s.t_max, 400, dtype=torch.float64)
    axes[0].plot(t, s.alpha(t), label=name)
    axes[1].plot(t, s.sigma(t), label=name)
    axes[2].plot(t, s.lam(t), label=name)
axes[1].set_yscale("log")
for ax, title in zip(axes, ["α_t", "σ_t (log scale)", "λ_t = log(α_t/σ_t)"]):
    ax.set_title(title)
    ax.set_xlabel("t  (0 = data, 1 = noise)")
axes[0].legend()
fig.tight_layout()
fig.savefig(OUT / "01_schedules.png", dpi=110)

# %% 2. [RD] Fig. 3: first-order paths x_t = α_t·x0 + σ_t·ε for fixed pairs, and the same paths as z_t = x_t/α_t
g = torch.Generator().manual_seed(SEED)
x0 = mixture.sample(6, g)
eps = torch.randn(6, 2, generator=g, dtype=torch.float64)
FORMS = ["vp-sd", "subvp", "ve", "fm"]
fig, axes = plt.subplots(2, len(FORMS), figsize=(4 * len(FORMS), 8))
print("first-order paths: deviation from the chord (0 = straight)")
print(f"{'form':8} {'x_t':>8} {'z_t':>8}")
for j, name in enumerate(FORMS):
    s = get_schedule(name)
    t = torch.linspace(s.t_min, s.t_max, 200, dtype=torch.float64)
    c = s(t)
    x_path = c.alpha[:, None, None] * x0 + c.sigma[:, None, None] * eps                        # (T, B, 2)
    z_path = x_path / c.alpha[:, None, None]
    print(f"{name:8} {path_deviation(x_path):8.4f} {path_deviation(z_path):8.2e}")
    near = (c.sigma / c.alpha) <= R_LATE                                  # z_T = x_T/α_T is huge: show r ≤ R_LATE
    for b in range(x0.shape[0]):
        axes[0, j].plot(x_path[:, b, 0], x_path[:, b, 1], lw=1)
        axes[1, j].plot(z_path[near, b, 0], z_path[near, b, 1], lw=1)
    for ax in axes[:, j]:
        ax.scatter(x0[:, 0], x0[:, 1], c="k", s=12, zorder=3)
    axes[0, j].set_title(f"{name}: x_t (first-order paths)")
    axes[1, j].set_title(f"{name}: z_t = x_t/α_t, where σ_t/α_t ≤ {R_LATE:g}")
fig.tight_layout()
fig.savefig(OUT / "01_first_order_paths.png", dpi=110)

# %% 3. Train one teacher per form; their sampled paths bend (the prediction x̂0 moves along the path)
target = mixture.sample(N_EVAL, torch.Generator().manual_seed(SEED + 1)).float()
noise = named_noise(SEED, "eval noise", (N_EVAL, 2))                # as tutorial 02's
rows = []
fig, axes = plt.subplots(1, len(TEACHERS), figsize=(4 * len(TEACHERS), 4))
for j, (label, (name, pred_type)) in enumerate(TEACHERS.items()):
    s = get_schedule(name)
    net = make_toy(s, pred_type, SIGMA_DATA)
    teacher, losses = train_toy(net, s, pred_type, independent_batches(mixture, s),
                                ToyTrainConfig(steps=TRAIN_STEPS, batch=BATCH, lr=LR, seed=SEED), desc=f"teacher {label}")
    save_toy(teacher, OUT / f"teacher_{label.replace('/', '_')}.pt")
    xs, ts, x0s = trajectory(Predictor(teacher, pred_type, s), s.sigma(s.t_max).item() * noise[:N_PATHS],
                             get_grid(s, 25), SOLVERS["dpm++2m"], s)
    late = (s.sigma(ts) / s.alpha(ts)) <= R_LATE                  # where the samples emerge (r_t = σ_t/α_t ≤ 2)
    alpha = s.alpha(ts[late]).float()[:, None, None]
    dist = few_step_distances(teacher, s, pred_type, noise, target)
    rows.append((label, dist, first_order_error(x0s), path_deviation(xs[late]), path_deviation(xs[late] / alpha)))
    axes[j].scatter(target[:, 0], target[:, 1], s=1, c="0.8")
    for b in range(N_PATHS):
        axes[j].plot(xs[late, b, 0], xs[late, b, 1], lw=0.8)
        axes[j].scatter(xs[-1, b, 0], xs[-1, b, 1], s=6, c="k")
    axes[j].set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), title=f"{label} teacher: paths where σ/α ≤ {R_LATE:g}")
fig.tight_layout()
fig.savefig(OUT / "01_teacher_paths.png", dpi=110)

# %% Table
floor = sliced_wasserstein(target, mixture.sample(N_EVAL, torch.Generator().manual_seed(SEED + 3)).float())
print(f"\nteachers: sliced-W2 to the target at k model calls (noise floor of two exact sets: {floor:.3f})")
print(f"{'teacher':10} {'1':>7} {'2':>7} {'4':>7} {'25':>7} {'1st-order err':>14} {'dev x_t':>8} {'dev z_t':>8}")
print(f"(deviations from the chord over the part of each path with r_t ≤ {R_LATE}; 0 would be straight)")
for label, d, foe, dev_x, dev_z in rows:
    print(f"{label:10} {d[1]:7.3f} {d[2]:7.3f} {d[4]:7.3f} {d[25]:7.3f} {foe:14.3f} {dev_x:8.3f} {dev_z:8.3f}")
print(f"\nfigures in {OUT}/: 01_schedules.png, 01_first_order_paths.png, 01_teacher_paths.png")
