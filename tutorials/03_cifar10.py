# %% [markdown]
# # 03 — CIFAR-10: a teacher, its pairs, Rectified Diffusion against Rectified Flow
#
# The pipeline lives in the library (`rd/cifar.py`, also a command: `python -m rd.cifar --help`); this walk-through
# explains its choices, runs it, and reads its results:
#
#     python tutorials/03_cifar10.py                     # the whole pipeline, resumable (runs/cifar)
#     RD_SMOKE=1 python tutorials/03_cifar10.py          # a CPU miniature on random images (no FID)
#
# 1. Why the teacher's form decides 1-call quality (a few lines of arithmetic, below).
# 2. The pipeline: teacher → pairs → RD, RF and phased RD on the same pairs → FID at 1, 2, 4 calls.
# 3. Its tables and grids.

# %% Setup
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

from rd.cifar import PRESETS, CifarConfig, run
from rd.cli import smoke_mode
from rd.predictions import FORMS, loss_weight, x0_gain
from rd.schedules import get_schedule

# %% Config
SMOKE = smoke_mode()
CONFIG = CifarConfig(**PRESETS["smoke"]) if SMOKE else CifarConfig()   # every field: python -m rd.cifar --help
if "RD_OUT" in os.environ:
    CONFIG.out = os.environ["RD_OUT"]
FIGURES = Path(CONFIG.out)

# %% [markdown]
# ## 1. Where the form bites: one step from t = 1
#
# A 1-call sample is x̂0(x_T, T). How an error δ in the network's output becomes an error in that image depends on
# the prediction type, |∂x̂0/∂output| = 1/x0_gain: for ε it is σ_T/α_T (14.6 on SD's schedule, 119 on the cosine
# schedule at its t_max), for v on a VP schedule σ_T ≤ 1, for EDM's preconditioned output c_out ≤ σ_d.
# The plain training loss of each form weighs an x̂0 error at time t by x0_gain², so an ε-model is barely asked to be
# right at t ≈ 1, exactly where a 1-call sampler reads it. Rectified Diffusion keeps the teacher's form: the
# teacher's form is inherited by the student. Output and weighting can be chosen apart: `--teacher_weight=eps`
# (vp-sd-v's default) keeps v's bounded output and weighs the loss over t as ε's does (section 3 measures what that
# buys).

# %% The arithmetic, per form
print("| form | t_max | output error → x̂0 error at t_max | loss weight on an x̂0 error at t_max (relative to x0) |")
print("|---|---|---|---|")
for name, (sched_name, pred) in FORMS.items():
    s = get_schedule(sched_name)
    c = s(torch.tensor([s.t_max], dtype=torch.float64))
    print(f"| {name} | {s.t_max:g} | {1 / x0_gain(c, pred).item():.3g} | "
          f"{loss_weight(c, 'x0', pred).item():.3g} |")

fig = Figure(figsize=(6, 3.5))
ax = fig.subplots()
for name, (sched_name, pred) in FORMS.items():
    s = get_schedule(sched_name)
    t = torch.linspace(s.t_min, s.t_max, 400, dtype=torch.float64)
    ax.semilogy(s.lam(t), loss_weight(s(t), "x0", pred), label=name)    # λ, not t: the forms' clocks differ
ax.invert_xaxis()
ax.set_xlabel("log-SNR λ (data on the left, noise on the right)")
ax.set_ylabel("weight of an x̂0 error in the loss")
ax.legend(fontsize=7)
fig.tight_layout()
FIGURES.mkdir(parents=True, exist_ok=True)
fig.savefig(FIGURES / "03_form_weights.png", dpi=100)

# %% [markdown]
# ## 2. The pipeline
#
# - **Teacher**: the `cifar` UNet (38.3 M parameters) in the form `CONFIG.form` — v-prediction on Stable Diffusion's
#   schedule by default (as SD 2 trains), its squared error weighed over t like ε's; `FORMS` lists the others (SD's
#   ε, the cosine schedule's v, SD-2's zero-terminal-SNR v, EDM), each runnable with `--form=NAME`. Each form trains
#   with its measured loss weighting and peak LR (`rd.predictions.TEACHER_RECIPES`), and
#   `--teacher_weight`, `--lr` override it. bf16, `torch.compile`, learning-rate warm-up to 5e-4 (vp-sd-v) then
#   linear decay to 0 over 7,000 steps.
# - **Pairs**: ε drawn once; the teacher's EMA solves its ODE with DPM-Solver++(2M) through 4 λ-uniform phases down to
#   the clean sample (the last step lands on σ = 0). One set of pairs serves every student.
# - **Students**, all from the teacher's weights, same pairs, batch, learning rate, EMA, precision and step count:
#   `rd` (the teacher's schedule and prediction type: [RD Alg. 4]), `rf` (the same pairs in the flow-matching form
#   with velocity prediction: [RF, InstaFlow]), `rd2`, `rd4` (phased RD, K = 2, 4: sampled with one first-order step
#   per phase, landing on the phase boundaries [RD §2.3]; the last 30 % of each phase, in λ, trains on the next
#   phase's pair, so that each query lies inside its own phase's training window: `--handover`). The loss of all four:
#   each form's own squared error, v's for RD (the teacher's prediction type) and the velocity's for RF, as Rectified
#   Flow trains (`--student_loss=huber`: the official RD code's pseudo-Huber loss on x̂0, which section 3 compares).
#   They train on times weighted towards where they are queried (`--student_t=late`, the default; section 3 measures
#   it), each in its own t: `rd` and `rf` towards t_max, where a 1-call sample starts, the phased students towards
#   each phase's start.
# - **Evaluation**: FID-10k against the CIFAR-10 train statistics at 1, 2, 4 calls (the teacher also at 10 and 25),
#   of the pairs' own x̂0 (the students' data), FID's own calibration, sample grids, throughputs and minutes per stage.
#
# Every stage resumes from its checkpoint; a run stopped by SIGTERM (`timeout -s TERM`, a cluster's limit) saves and
# exits, and the same command goes on from there.

# %% Run it
results = run(CONFIG)

# %% [markdown]
# ## 3. Reading the results
#
# `results.md` holds the FID table, RD ÷ RF at equal calls and the phased students against the teacher;
# `samples.png` the grids (open it: a FID without a look at the samples is half a result).
#
# What to expect at the defaults (one H200, 2026-12-01, the whole pipeline as one command in 21 minutes; RESULTS.md has
# the tables, commands and grids' description): the teacher reaches FID-10k 11.6 at 25 calls (12.5 at 10) and is grey
# blur at 1–2 calls; RD gives 21.1 / 18.7 / 16.0 at 1 / 2 / 4 calls against RF's 37.6 / 19.6 / 16.7 on the same pairs,
# steps, times and loss family (RD ÷ RF 0.56 / 0.96 / 0.96; a second students' seed: RD 21.3 / 18.9 / 16.2, RF 37.4 /
# 19.7 / 16.9, ratios within 0.01). RF's velocity loss fails it at one call: its images come out pale and flat. With the
# pseudo-Huber loss (`--student_loss=huber`) RF gives 27.7 / 18.7 / 16.7 and RD 21.2 / 19.4 / 16.5, so RD on its better
# loss against RF on its better one is 0.76 at one call and 1.00 at two (a second students' seed of the pseudo-Huber
# pair: RD 21.4 / 19.5 / 16.6, RF 26.7 / 18.5 / 16.6). Phased RD gives 15.7 at 2 calls (K = 2) and 14.2 at 4 (K = 4);
# with the pseudo-Huber loss 16.3 and 13.9 (13.6 at `--student_lr=1e-4`); on their form's own times 16.5 and 14.5, 15.9
# and 14.4 with twice the steps. The students give the teacher's 25-call images from the same noise, a little softer.
# `results.md` also scores the pairs' own x̂0, the data the students learn from. Where the second of two calls goes
# matters to RD: for the pseudo-Huber pair `--grid=time_uniform` (RD's second call at λ = −0.48, against the log-SNR
# grid's 0.43; RF's at λ = 0 on both) gives RD 18.1 against 19.4, and RF 18.7 on both. With pseudo-Huber students on the
# forms' own times (`--student_t=schedule`) RD falls to 27.2 / 19.2 / 16.4 and RF stays at 27.9 / 18.3 / 16.3 (a second
# students' seed moved those by at most 0.9 at one call, 0.25 at 2 and 4). The students' budget matters most at one
# call: there `--student_t=schedule --student_steps=2000` gives RD 20.1 and RF 21.3; 250 steps 70.0 and 63.8 (RF learns
# faster at first).
#
# **Why the teacher's form decides one call** (section 1, measured: `--student_t=schedule` with `--form=`, and for
# vp-sd-v's own loss with `--teacher_weight= --lr=1e-3`; 7,000 teacher steps, pseudo-Huber students; H200s,
# 2026-11-30/12-01; FID-10k on evaluation noise that partly repeated the pairs', ≤ 1.4 % kinder to every student;
# RESULTS.md has both seeds and the grids):
#
# | teacher | teacher at 4 / 10 / 25 calls | RD at 1 / 2 / 4 calls | RF at 1 / 2 / 4 calls |
# |---|---|---|---|
# | vp-sd-eps | 29.3 / 12.2 / 11.5 | 155.0 / 21.5 / 16.0 | 21.6 / 18.2 / 17.1 |
# | vp-sd-v, its own loss | 31.4 / 14.6 / 14.1 | 22.5 / 19.9 / 17.7 | 29.7 / 20.2 / 17.9 |
# | vp-sd-v weighted like ε (the default; RESULTS.md, 2026-12-01 03:14) | 30.8 / 12.5 / 11.7 | 27.2 / 18.9 / 16.2 | 27.4 / 18.1 / 16.0 |
# | vp-cosine-v | 59.6 / 16.6 / 13.3 | 31.2 / 22.8 / 18.1 | 34.4 / 21.6 / 18.7 |
#
# The ε teacher is a good teacher, and its RD student is the better one at 2 and 4 calls; at 1 call it fails,
# because its one step from t = 1 multiplies ε̂'s error by σ_T/α_T = 14.6 (its grid: the right images under coloured
# speckle). RF, which converts the pairs to velocity, does not inherit the factor. The v form on the same schedule
# bounds it by σ_T ≤ 1: with v's own loss its RD student leads RF on its own pairs at one call (22.5 against 29.7),
# at the price of a teacher 2.6 FID worse at 25 calls. The same v network with its loss weighed like ε's is the best
# v teacher measured (within 0.2 FID of ε's) and keeps a working 1-call student, but RD's lead is gone (27.2 against
# 27.4): v's own loss counts an x̂0 error at t ≈ 1 about 215 times more than ε's, and that weight, not the output
# alone, gave RD its 1-call lead. The default takes the better teacher; `--teacher_weight= --lr=1e-3` gives the
# RD-favoured one. The weight can also go to the students, as the default does: with `--student_t=late` both train
# on t = t_max − (t_max − t_min)·u², u uniform (a third of their batches in the last tenth of t, against a tenth),
# and from the default teacher pseudo-Huber students give RD 21.2 at one call against RF's 27.7 (above). Against
# such students on the forms' own times (RD 27.2, RF 27.9) RD gains 6.0 FID and RF nothing. (EDM's students on their
# own times fail for another reason: its log-normal training times never reach σ_max, where a 1-call sample starts.)

# %% The table
print((Path(CONFIG.out) / "results.md").read_text())
