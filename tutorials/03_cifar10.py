# %% [markdown]
# # 03 — CIFAR-10: a UNet teacher, its pairs, Rectified Diffusion vs Rectified Flow, FID
#
# teacher (SD's VP schedule, ε-prediction) → 25-step DPM-Solver++(2M) pairs from its EMA → RD student (the teacher's
# own form), RF student (flow matching + velocity) and RD-v student (the teacher's form, its ε-loss weighted like
# v's; rd.predictions.loss_weight), same pairs, same steps → FID-10k of every model at 1, 2, 4 calls (the teacher
# also at 10 and 25) against CIFAR-10 train statistics, sample grids, throughput, GPU-minutes.
#
#     RD_CIFAR=data/cifar10-jpg.tar.gz RD_INCEPTION=data/inception-2015-12-05-fp16.pt python tutorials/03_cifar10.py
#     RD_STAGE=teacher python tutorials/03_cifar10.py        # one stage: teacher, pairs, rd, rf, rdv or eval
#
# Every stage resumes from its checkpoint and skips what is done; a stage whose input is missing stops with an error
# that names the stage to run first. Training stages are sized by wall-clock budgets (summed over restarts); the
# defaults (teacher 11 min, RD 3 min, RF and RD-v as many steps as RD) make the whole pipeline 23.2 GPU-minutes on one
# H100 (the stages' sum, measured; README).
# A run stopped by SIGTERM (`timeout -s TERM …`, a cluster's time limit) saves its checkpoint: rerun to go on.
# FIDs use the JPEG copy of CIFAR-10 (quality 75, 4:2:0) for the reference statistics: they are close to, not equal
# to, numbers on the original PNGs. `RD_SMOKE=1` runs a CPU miniature on random images (no FID without the Inception
# weights).

# %% Setup
import copy
import dataclasses
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

from rd.data import GPULoader, load_cifar10, to_uint8
from rd.figures import tile
from rd.io import Laps, atomic_write_text, synchronize
from rd.rectify import flow_batches, flow_student, generate_pairs, load_pairs, pair_batches
from rd.sampling import sample
from rd.schedules import get_schedule
from rd.train import TrainConfig, train
from rd.unet import UNet, UNetConfig

# %% Config
SMOKE = os.environ.get("RD_SMOKE") == "1"
OUT = Path(os.environ.get("RD_OUT", "runs/cifar-smoke" if SMOKE else "runs/cifar"))
CIFAR = os.environ.get("RD_CIFAR", "data/cifar10-jpg.tar.gz")            # pickles, image folder or its .tar.gz
INCEPTION = os.environ.get("RD_INCEPTION", "" if SMOKE else "data/inception-2015-12-05-fp16.pt")
STAGE = os.environ.get("RD_STAGE", "all")  # all, or one of STAGES
STAGES = ("teacher", "pairs", "rd", "rf", "rdv", "eval")
SCHEDULE, PRED = "vp-sd", "eps"            # the teacher's form (SD's scaled-linear VP, ε): RD keeps it
PRESET = os.environ.get("RD_PRESET", "tiny" if SMOKE else "cifar")   # UNet: cifar (38.3 M), cifar-small (9.6 M), tiny
DROPOUT = 0.0                              # minutes-long runs: dropout would only slow the start
BATCH = 8 if SMOKE else 512
LR, STUDENT_LR = 5e-4, 2e-4                # Adam after a 300-step warm-up (students start from the teacher)
TEACHER_MIN = float(os.environ.get("RD_TEACHER_MIN", 0.05 if SMOKE else 11))   # training budgets (minutes)
STUDENT_MIN = float(os.environ.get("RD_STUDENT_MIN", 0.02 if SMOKE else 3))      # RD's; RF, RD-v take RD's steps
COMPILE = not SMOKE and torch.cuda.is_available()   # torch.compile the teacher (≈ 1 min once, then ≈ 2× faster)
N_PAIRS = 16 if SMOKE else 25_000
PAIR_STEPS = 4 if SMOKE else 25            # DPM-Solver++(2M) steps of the teacher per pair
N_FID = 16 if SMOKE else int(os.environ.get("RD_FID_N", 10_000))   # samples per FID: 10_000 (FID-10k) or 50_000
SEED = 0
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if not SMOKE and N_FID not in (10_000, 50_000):
    raise SystemExit(f"RD_FID_N must be 10000 (FID-10k) or 50000 (FID-50k); got {N_FID}")
try:
    UNetConfig.preset(PRESET)
except ValueError as err:
    raise SystemExit(f"RD_PRESET: {err}")
if STAGE not in STAGES + ("all",):
    raise SystemExit(f"RD_STAGE must be 'all' or one of {', '.join(STAGES)}; got {STAGE!r}")
OUT.mkdir(parents=True, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
seconds = {}                               # this invocation's seconds per block (throughputs)
laps = Laps(OUT / "minutes.json")          # GPU-minutes per stage, summed over invocations (a run may be split)


def run(name):
    """Whether this invocation runs stage `name` (else the stage's saved result is loaded, or an error says why not)."""
    return STAGE in ("all", name)


def stop_after(name):
    """`RD_STAGE=name` runs that stage only: stop here."""
    if STAGE == name:
        print(f"stage {name} done; its outputs are in {OUT}/")
        sys.exit(0)


class timed:
    """Wall-clock seconds of a block (GPU-seconds on one GPU), synchronised, recorded in `seconds` and added to the
    pipeline stage `stage` in minutes.json (also when the block ends by an error, e.g. the exit of a training stage
    stopped by SIGTERM; None: not added)."""

    def __init__(self, name, stage="same"):
        self.name, self.stage = name, name if stage == "same" else stage

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        synchronize()
        dt = time.perf_counter() - self.t
        seconds[self.name] = seconds.get(self.name, 0.0) + dt
        if self.stage:
            laps.add(self.stage, dt / 60)


# %% Data: uint8 CIFAR-10 train decoded once (cached), kept on the GPU; batches drawn per step (see GPULoader.sample)
with timed("data"):
    if SMOKE:
        images = (torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)) * 255).to(torch.uint8)
        labels = torch.zeros(256, dtype=torch.int64)
    else:
        images, labels = load_cifar10(CIFAR, "train", cache_dir=OUT / "cache")
    loader = GPULoader(images, labels, BATCH, DEVICE, flip=True, seed=SEED)
schedule = get_schedule(SCHEDULE)


def teacher_batches(n, g):
    x0, _ = loader.sample(n, g)
    return x0, torch.randn(x0.shape, generator=g, device=DEVICE), schedule.sample_t(n, g, device=DEVICE), None


def with_none(batches):
    return lambda n, g: (*batches(n, g), None)


def train_cfg(budget, lr, compile=False):
    return TrainConfig(steps=10**7, batch=BATCH, lr=lr, warmup=300, ema_decay=0.999, max_minutes=budget, amp="bf16",
                       log_every=5 if SMOKE else 100, ckpt_every=10 if SMOKE else 1000,   # a crash loses ≤ 1000 steps
                       channels_last=DEVICE == "cuda", compile=compile)


# %% 1. Teacher
torch.manual_seed(SEED)
model_cfg = UNetConfig.preset(PRESET)
model_cfg.dropout = DROPOUT
with timed("teacher"):
    teacher = train(UNet(model_cfg).to(DEVICE), schedule, PRED, teacher_batches, train_cfg(TEACHER_MIN, LR, COMPILE),
                    OUT / "teacher", model_config=vars(model_cfg), desc="teacher", require_done=not run("teacher"))
stop_after("teacher")

# %% 2. Pairs from the EMA teacher: ε once, x̂0 = 25 steps of DPM-Solver++(2M), bf16 network, fp32 solver state
def pairs_on_disk():
    manifest = OUT / "pairs" / "manifest.json"
    return sum(s["n"] for s in json.loads(manifest.read_text())["shards"].values()) if manifest.exists() else 0


rate_file = OUT / "pairs_rate.json"        # pairs made and their seconds, summed over the invocations that made any
before = pairs_on_disk()
if run("pairs"):
    with timed("pairs"), torch.autocast(DEVICE, dtype=torch.bfloat16):
        generate_pairs(teacher, schedule, PRED, OUT / "pairs", N_PAIRS, (3, 32, 32), shard_size=5000,
                       solver="dpm++2m", steps=PAIR_STEPS, seed=SEED, batch=2500, device=DEVICE)
made = pairs_on_disk() - before              # pairs made by this invocation
if made > 0:
    fresh = before == 0 or not rate_file.exists()            # pairs made anew: forget an older directory's rate
    pair_rate = {"pairs": 0, "seconds": 0.0} if fresh else json.loads(rate_file.read_text())
    pair_rate = {"pairs": pair_rate["pairs"] + made, "seconds": pair_rate["seconds"] + seconds["pairs"]}
    atomic_write_text(json.dumps(pair_rate), rate_file)
with timed("pairs (load)", stage="pairs"):
    pairs = load_pairs(OUT / "pairs", schedule, (3, 32, 32)).to(DEVICE)
stop_after("pairs")

# %% 3. RD (the teacher's form), RF (FM + velocity) and RD-v (RD weighted like v): same pairs, same steps, all three
#    from the teacher's weights
with timed("RD"):
    rd_student = train(copy.deepcopy(teacher), schedule, PRED, with_none(pair_batches(pairs, schedule)),
                       train_cfg(STUDENT_MIN, STUDENT_LR), OUT / "rd", desc="RD", require_done=not run("rd"))
stop_after("rd")
# RF and RD-v take exactly RD's step count (RD stops at its minute budget): all see the same pairs, same steps
rd_steps = torch.load(OUT / "rd" / "ckpt.pt", map_location="cpu", weights_only=True)["step"]
for stage in ("rf", "rdv"):
    if (OUT / stage / "ckpt.pt").exists() and (steps := torch.load(OUT / stage / "ckpt.pt", map_location="cpu",
                                                                   weights_only=True)["step"]) > rd_steps:
        raise SystemExit(f"{OUT / stage} holds a student of {steps} steps, RD took {rd_steps}: the comparison needs "
                         f"equal steps; delete {OUT / stage} and run the {stage} stage again")
fm = get_schedule("fm")
with timed("RF"):
    rf_student = train(flow_student(teacher).requires_grad_(True), fm, "flow", with_none(flow_batches(pairs, fm)),
                       dataclasses.replace(train_cfg(0, STUDENT_LR), steps=rd_steps), OUT / "rf", desc="RF",
                       require_done=not run("rf"))
stop_after("rf")
# RD-v: the plain ε-loss weighs an x̂0 error at t by (α_t/σ_t)² (0.0047 at t = 1 on SD's schedule); weighted like
# v's loss, the student is asked to be right where a 1-call sampler evaluates it — same network, schedule, ε
with timed("RD-v"):
    rdv_student = train(copy.deepcopy(teacher), schedule, PRED, with_none(pair_batches(pairs, schedule)),
                        dataclasses.replace(train_cfg(0, STUDENT_LR), steps=rd_steps, weight_like="v"), OUT / "rdv",
                        desc="RD-v", require_done=not run("rdv"))
stop_after("rdv")

# %% 4. Evaluation: FID-10k (JPEG CIFAR-10 train stats) at 1, 2, 4 calls (teacher also 10, 25); sample grids
models = {"teacher": (teacher, schedule, PRED), "RD": (rd_student, schedule, PRED), "RF": (rf_student, fm, "flow"),
          "RD-v": (rdv_student, schedule, PRED)}
nfes = {"teacher": (1, 2, 4) if SMOKE else (1, 2, 4, 10, 25), "RD": (1, 2, 4), "RF": (1, 2, 4), "RD-v": (1, 2, 4)}
noise = torch.randn(N_FID, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))


@torch.no_grad()
def generate(net, sch, pred, k, n=N_FID, batch=2500):
    """n uint8 samples after k model calls (DPM-Solver++(1) for k = 1, DPM-Solver++(2M) otherwise)."""
    out = []
    for z in noise[:n].split(batch):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            x = sample(net, z.to(DEVICE), sch, pred, "dpm++1" if k == 1 else "dpm++2m", k)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


inception, calibration = None, None
if INCEPTION and Path(INCEPTION).exists():
    from rd.fid import feature_stats, fid, fid_from_stats, inception_features, load_inception, reference_stats
    inception = load_inception(INCEPTION, device=DEVICE)
    with timed("eval"):
        ref_mu, ref_sigma = reference_stats(f"cifar10-train-{len(images)}", lambda: images, inception,
                                            cache_dir=OUT / "cache", device=DEVICE)
        # calibration: FID(test 10k vs train 50k) must be 3.11 on the JPEG copy (shared/data/README.md)
        test_images, _ = load_cifar10(CIFAR, "test", cache_dir=OUT / "cache", verbose=False)
        with timed("features", stage=None):
            test_features = inception_features(test_images, inception, device=DEVICE, progress=False)
        calibration = fid_from_stats(*feature_stats(test_features), ref_mu, ref_sigma)
    print(f"calibration: FID(test {len(test_images)} vs train {len(images)}) = {calibration:.4f} (expected 3.11 ± 0.02)")
else:
    print(f"no Inception weights at {INCEPTION}: FID skipped (see rd/fid.py for how to get them)")
results, grids = {}, {}
for name, (net, sch, pred) in models.items():
    for k in nfes[name]:
        with timed(f"sample {name}@{k}", stage="eval"):
            samples = generate(net, sch, pred, k)
        grids[(name, k)] = samples[:64]
        with timed("eval"):
            results[(name, k)] = fid(samples, ref_mu, ref_sigma, inception, device=DEVICE, progress=False) if inception else None

# %% Tables: FID, GPU-minutes per stage, throughput; the grids
fmt = lambda v: "—" if v is None else f"{v:.2f}"
gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
lines = [f"FID-{N_FID // 1000}k vs CIFAR-10 train ({len(images)} JPEG-decoded images), {PRESET} UNet, "
         f"{SCHEDULE}/{PRED} teacher; {gpu}", "", "| model | 1 | 2 | 4 | 10 | 25 |", "|---|---|---|---|---|---|"]
for name in models:
    lines.append(f"| {name} | " + " | ".join(fmt(results.get((name, k))) for k in (1, 2, 4, 10, 25)) + " |")
if calibration is not None:
    lines += ["", f"Calibration: FID(CIFAR-10 test 10k vs train 50k, JPEG copy) = {calibration:.4f} (reference 3.114)"]
lines += ["", "| stage (summed over invocations; eval = sampling + FID) | GPU-minutes |", "|---|---|"]
lines += [f"| {k} | {v:.2f} |" for k, v in laps.minutes.items()] + [f"| all | {sum(laps.minutes.values()):.2f} |"]


def logged_rate(name):
    """Median img/s of a run's log lines, the first one (compilation, warm-up) left out."""
    rates = [float(line.split(" | ")[3].split()[0]) for line in (OUT / name / "log.txt").read_text().splitlines()
             if line.startswith("step ")]
    return torch.tensor(rates[1:] or rates).median().item() if rates else float("nan")


lines += ["", "| throughput | rate |", "|---|---|",
          f"| teacher training, batch {BATCH}, bf16{', compiled' if COMPILE else ''} | {logged_rate('teacher'):,.0f} img/s |",
          f"| RD / RF / RD-v training, batch {BATCH}, bf16 | {logged_rate('rd'):,.0f} / {logged_rate('rf'):,.0f} / "
          f"{logged_rate('rdv'):,.0f} img/s |"]
if rate_file.exists():
    pair_rate = json.loads(rate_file.read_text())
    lines.append(f"| pair generation ({PAIR_STEPS} steps DPM-Solver++(2M), batch 2500, bf16) | "
                 f"{pair_rate['pairs'] / pair_rate['seconds']:,.0f} pairs/s |")
for k in (1, 4):
    lines.append(f"| teacher sampling, {k} call{'s' * (k > 1)}, batch 2500, bf16 | {N_FID / seconds[f'sample teacher@{k}']:,.0f} img/s |")
if "features" in seconds:
    lines.append(f"| FID Inception features, batch 500, fp32 | {len(test_images) / seconds['features']:,.0f} img/s |")
table = "\n".join(lines)
print(table)
(OUT / "results.md").write_text(table + "\n")
(OUT / "results.json").write_text(json.dumps({f"{n}@{k}": v for (n, k), v in results.items()}
                                             | {"calibration": calibration, "seconds": seconds}, indent=1))
fig, axes = plt.subplots(len(models), 5, figsize=(20, 4.2 * len(models)))
for i, name in enumerate(models):
    for j, k in enumerate((1, 2, 4, 10, 25)):
        axes[i, j].axis("off")
        if (name, k) in grids:
            axes[i, j].imshow(tile(grids[(name, k)]))                     # 8 × 8 samples
            axes[i, j].set_title(f"{name}, {k} call{'s' * (k > 1)}, FID {fmt(results[(name, k)])}")
fig.tight_layout()
fig.savefig(OUT / "samples.png", dpi=72)
print(f"tables and grids in {OUT}/: results.md, samples.png")
