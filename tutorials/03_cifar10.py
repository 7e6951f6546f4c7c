# %% [markdown]
# # 03 — CIFAR-10: a UNet teacher, its pairs, Rectified Diffusion vs Rectified Flow, FID
#
# The whole pipeline in one run, sized by wall-clock budgets so that it fits one GPU session:
# teacher (VP schedule, ε-prediction) → 25-step DPM-Solver++(2M) pairs → RD student (the teacher's own form)
# and RF student (flow matching + velocity, same pairs, same steps) → FID-10k of every model at 1, 2, 4 calls
# (and the teacher at 10 and 25) against CIFAR-10 train statistics, with sample grids.
#
#     RD_CIFAR=data/cifar10-jpg.tar.gz RD_INCEPTION=data/inception-2015-12-05-fp16.pt python tutorials/03_cifar10.py
#
# FIDs here use the JPEG copy of CIFAR-10 (quality 75, 4:2:0) for both the reference statistics and nothing else:
# they are close to, not equal to, numbers on the original PNGs. `RD_SMOKE=1` runs a CPU miniature on random images
# (no FID without the Inception weights) — the tests do that.

# %% Setup
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]) if "__file__" in globals() else "..")  # rd from the clone

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from rd.data import GPULoader, load_cifar10
from rd.rectify import flow_batches, flow_student, generate_pairs, load_pairs, pair_batches
from rd.sampling import sample
from rd.schedules import get_schedule
from rd.train import TrainConfig, train
from rd.unet import UNet, UNetConfig

# %% Config
SMOKE = os.environ.get("RD_SMOKE") == "1"
OUT = Path(os.environ.get("RD_OUT", "runs/cifar-smoke" if SMOKE else "runs/cifar"))
CIFAR = os.environ.get("RD_CIFAR", "data/cifar10-jpg.tar.gz")            # pickles, image folder or its .tar.gz
INCEPTION = os.environ.get("RD_INCEPTION", "data/inception-2015-12-05-fp16.pt")
SCHEDULE, PRED = "vp-sd", "eps"            # the teacher's form (SD's scaled-linear VP, ε): RD keeps it
PRESET = "tiny" if SMOKE else "cifar-small"
BATCH = 8 if SMOKE else 256
LR = 3e-4                                  # Adam after a 200-step warm-up
TEACHER_MIN = float(os.environ.get("RD_TEACHER_MIN", 0.05 if SMOKE else 3.3))   # wall-clock budgets (minutes)
STUDENT_MIN = float(os.environ.get("RD_STUDENT_MIN", 0.02 if SMOKE else 1.2))
N_PAIRS = 16 if SMOKE else 25_000
PAIR_STEPS = 4 if SMOKE else 25            # DPM-Solver++(2M) steps of the teacher per pair
N_FID = 16 if SMOKE else 10_000            # FID-10k
SEED = 0
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
minutes = {}


def stage(name):
    """Record each stage's wall-clock minutes (GPU-minutes on one GPU)."""
    minutes[name] = time.perf_counter()


def done(name):
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    minutes[name] = (time.perf_counter() - minutes[name]) / 60


# %% Data
stage("data")
if SMOKE:
    images = (torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)) * 255).to(torch.uint8)
    labels = torch.zeros(256, dtype=torch.int64)
else:
    images, labels = load_cifar10(CIFAR, "train", cache_dir=OUT / "cache")
loader = GPULoader(images, labels, BATCH, DEVICE, flip=True, seed=SEED)
schedule = get_schedule(SCHEDULE)
done("data")


def teacher_batches(n, g):
    x0, _ = next(loader)
    return x0, torch.randn(x0.shape, generator=g, device=DEVICE), schedule.sample_t(n, g, device=DEVICE), None


def with_none(batches):
    return lambda n, g: (*batches(n, g), None)


def train_cfg(budget):
    return TrainConfig(steps=10**6, batch=BATCH, lr=LR, warmup=200, ema_decay=0.999, max_minutes=budget,
                       amp="bf16", log_every=5 if SMOKE else 50, ckpt_every=10**6, channels_last=DEVICE == "cuda")


# %% 1. Teacher
stage("teacher")
torch.manual_seed(SEED)
model_cfg = UNetConfig.preset(PRESET)
teacher = train(UNet(model_cfg).to(DEVICE), schedule, PRED, teacher_batches, train_cfg(TEACHER_MIN), OUT / "teacher",
                model_config=vars(model_cfg), desc="teacher")
done("teacher")

# %% 2. Pairs from the EMA teacher: ε once, x̂0 = 25 steps of DPM-Solver++(2M), bf16 network, fp32 solver state
stage("pairs")
with torch.autocast(DEVICE, dtype=torch.bfloat16):
    pair_dir = generate_pairs(teacher, schedule, PRED, OUT / "pairs", N_PAIRS, (3, 32, 32), shard_size=5000,
                              solver="dpm++2m", steps=PAIR_STEPS, seed=SEED, batch=2500, device=DEVICE)
pairs = load_pairs(pair_dir, schedule, (3, 32, 32)).to(DEVICE)
done("pairs")

# %% 3. RD (the teacher's form) and RF (FM + velocity), same pairs, same budget, both from the teacher's weights
stage("RD")
rd_student = train(copy.deepcopy(teacher), schedule, PRED,
                   with_none(pair_batches(pairs, schedule)), train_cfg(STUDENT_MIN), OUT / "rd", desc="RD")
done("RD")
stage("RF")
fm = get_schedule("fm")
rf_init = flow_student(teacher)
rf_student = train(rf_init.requires_grad_(True), fm, "flow", with_none(flow_batches(pairs, fm)),
                   train_cfg(STUDENT_MIN), OUT / "rf", desc="RF")
done("RF")

# %% 4. Evaluation: FID-10k (JPEG CIFAR-10 train stats) at 1, 2, 4 calls (teacher also 10, 25); sample grids
stage("eval")
models = {"teacher": (teacher, schedule, PRED), "RD": (rd_student, schedule, PRED), "RF": (rf_student, fm, "flow")}
nfes = {"teacher": (1, 2, 4) if SMOKE else (1, 2, 4, 10, 25), "RD": (1, 2, 4), "RF": (1, 2, 4)}
noise = torch.randn(N_FID, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))


@torch.no_grad()
def generate(net, sch, pred, k, n=N_FID, batch=2500):
    """n uint8 samples after k model calls (DPM-Solver++(1) for k = 1, DPM-Solver++(2M) otherwise)."""
    out = []
    for z in noise[:n].split(batch):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            x = sample(net, z.to(DEVICE), sch, pred, "dpm++1" if k == 1 else "dpm++2m", k)
        out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)


inception = None
if Path(INCEPTION).exists():
    from rd.fid import fid, load_inception, reference_stats
    inception = load_inception(INCEPTION, device=DEVICE)
    ref_mu, ref_sigma = reference_stats(f"cifar10-train-{len(images)}", lambda: images, inception,
                                        cache_dir=OUT / "cache", device=DEVICE)
else:
    print(f"no Inception weights at {INCEPTION}: FID skipped (see rd/fid.py for how to get them)")
results, grids = {}, {}
for name, (net, sch, pred) in models.items():
    for k in nfes[name]:
        samples = generate(net, sch, pred, k)
        grids[(name, k)] = samples[:64]
        results[(name, k)] = fid(samples, ref_mu, ref_sigma, inception, device=DEVICE, progress=False) if inception else None
done("eval")

# %% Table, grids, timings
fmt = lambda v: "—" if v is None else f"{v:.2f}"
lines = [f"FID-{N_FID // 1000}k vs CIFAR-10 train ({len(images)} JPEG-decoded images), {PRESET} UNet, "
         f"{SCHEDULE}/{PRED} teacher; device {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}", "",
         "| model | 1 | 2 | 4 | 10 | 25 |", "|---|---|---|---|---|---|"]
for name in models:
    lines.append(f"| {name} | " + " | ".join(fmt(results.get((name, k))) for k in (1, 2, 4, 10, 25)) + " |")
lines += ["", "| stage | minutes |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in minutes.items()]
for name in ("teacher", "rd", "rf"):
    log = (OUT / name / "log.txt").read_text().strip().splitlines()
    lines.append(f"{name} last log line: {log[-1] if log else '—'}")
table = "\n".join(lines)
print(table)
(OUT / "results.md").write_text(table + "\n")
(OUT / "results.json").write_text(json.dumps({f"{n}@{k}": v for (n, k), v in results.items()} | {"minutes": minutes}))
fig, axes = plt.subplots(3, 3, figsize=(12, 12))
for i, name in enumerate(models):
    for j, k in enumerate((1, 2, 4)):
        g = torch.cat([grids[(name, k)]] * (64 // len(grids[(name, k)]))).view(8, 8, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(256, 256, 3)
        axes[i, j].imshow(g.numpy())
        axes[i, j].set_title(f"{name}, {k} call{'s' * (k > 1)}, FID {fmt(results[(name, k)])}")
        axes[i, j].axis("off")
fig.tight_layout()
fig.savefig(OUT / "samples.png", dpi=80)
print(f"table and grids in {OUT}/: results.md, samples.png")
