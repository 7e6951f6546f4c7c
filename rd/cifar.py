"""The CIFAR-10 pipeline: a teacher, its pairs, Rectified Diffusion (plain and phased) beside Rectified Flow, FID.

    python -m rd.cifar                                          # every stage, resumable, into runs/cifar
    python -m rd.cifar --stages=teacher                         # one stage (teacher, pairs, students, eval)
    python -m rd.cifar --form=vp-sd-eps --out=runs/cifar-eps    # another teacher form (rd.predictions.FORMS)
    python -m rd.cifar --preset=smoke                           # a CPU miniature on random images, seconds
    python -m rd.cifar --help                                   # every flag with its default

Stages (each resumes from its checkpoint and skips what is done; a stage whose input is missing says which to run):
  teacher   the UNet in the form `form` (schedule + prediction type; its squared error weighed over t like
            `teacher_weight`'s) on CIFAR-10 train, a step budget (bf16 autocast on a GPU, float32 on a CPU; the same
            for pairs, students and sampling)
  pairs     ε once; the teacher's EMA solves its ODE (DPM-Solver++(2M), `pair_steps` steps through `phases`
            λ-uniform phases) down to the clean sample: one set of pairs for every student  [RD Alg. 4, §2.3]
  students  rd: the teacher's own form on the pairs [RD Alg. 4]; rf: the same pairs in the flow-matching form with
            velocity prediction [RF, InstaFlow]; rdK: phased RD with K phases [RD §2.3]. All start from the teacher's
            weights and share loss (each form's own squared error, or pseudo-Huber on x̂0 [RD code]), batch,
            learning rate, EMA, precision and step count (RD's budget); they train on times weighted towards where
            they are queried (`student_t`, each in its own t): rd and rf towards t_max, where a 1-call sample starts,
            rdK towards each phase's start.
  eval      FID of every model at 1, 2, 4 calls (teacher also at `teacher_calls`, rdK at K calls with one first-order
            step per phase) and of the pairs' own x̂0 (the students' data) against the train statistics,
            calibration, sample grids, throughputs, minutes per stage.
With a JPEG copy of CIFAR-10 (such as a quality-75 image-folder archive) FIDs are close to, not equal to, PNG numbers.
"""
import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from .cli import FlagChecks, arg, parse
from .data import GPULoader, load_cifar10
from .evaluate import call_counts, eval_models, evaluate, student_phases
from .fid import inception_problem
from .io import ConfigMismatch, UnreadableFile, atomic_write_text
from .predictions import FORMS, LOSSES, PRED_TYPES, teacher_recipe
from .rectify import (HANDOVER, STUDENT_TIMES, flow_batches, flow_student, generate_pairs, handover_problem,
                      load_pairs, pair_batches, pairs_on_disk, student_times)
from .sampling import GRIDS
from .schedules import get_schedule, lognormal_t
from .stages import Laps, StepMatch, parse_stages, synchronize
from .train import LR_DECAYS, TrainConfig, checkpoint_steps, train
from .unet import UNet, UNetConfig

STAGES = ("teacher", "pairs", "students", "eval")
T_SAMPLINGS = ("schedule", "lognormal")
EVAL_SAMPLERS = ("dpm++2m", "dpm++3m")     # one network call a step


@dataclass
class CifarConfig:
    out: str = arg("runs/cifar", "run folder: checkpoints, pairs, tables and grids")
    data: str = arg("data/cifar10-jpg.tar.gz", "CIFAR-10: the cifar-10-batches-py folder, an image folder or its "
                    ".tar.gz (rd.data.download fetches the official one); 'random' for 256 random images (smoke runs)")
    inception: str = arg("data/inception-2015-12-05-fp16.pt", "TF-Inception TorchScript file for FID; '' skips FID")
    form: str = arg("vp-sd-v", "teacher form: " + ", ".join(FORMS) + " (schedule + the network's output; "
                    "--teacher_weight and --lr default to the form's)")
    unet: str = arg("cifar", "UNet preset: cifar (38.3 M parameters), cifar-small (9.6 M), tiny")
    stages: str = arg("all", "'all' or a comma list of " + ", ".join(STAGES) + " (run in that order; each resumes or "
                      "skips what is done)")
    teacher_min: float = arg(0.0, "teacher budget in training minutes, summed over restarts (0: none)")
    teacher_steps: int = arg(7000, "teacher budget in steps (0: none); training stops at the first budget reached "
                             "(7,000 steps × 512 images)")
    batch: int = arg(512, "images per step, teacher and students")
    lr: float = arg(0.0, "teacher's peak Adam learning rate (0: the form's, rd.predictions.TEACHER_RECIPES: 5e-4 for "
                    "vp-sd-v and edm, 1e-3 for the others)")
    lr_decay: str = arg("linear", "learning-rate decay after warm-up, teacher and students: " + ", ".join(LR_DECAYS))
    warmup: int = arg(200, "linear warm-up steps, teacher and students (theirs at most a fifth of --student_steps)")
    ema_decay: float = arg(0.999, "teacher's EMA decay per step; the EMA's warm-up (1 + n)/(10 + n) is lower until "
                           "step 9/(1 − decay) − 10 (8,990 for 0.999), so shorter runs do not feel it")
    t_sampling: str = arg("schedule", "teacher's training noise levels: schedule (its own: uniform t on VP, "
                          "log-normal on VE) or lognormal (EDM's log-normal σ/α, on any schedule)")
    teacher_weight: str = arg("auto", "weigh the teacher's squared error like another prediction type's, "
                              + ", ".join(PRED_TYPES) + " (rd.predictions.loss_weight): eps keeps a v network's "
                              "output and weighs each t as ε's loss does; '': the form's own loss; auto: the form's "
                              "(rd.predictions.TEACHER_RECIPES: eps for vp-sd-v, '' for the others)")
    compile: bool = arg(True, "torch.compile the teacher on a GPU (about a minute once, then faster steps)")
    pairs: int = arg(100_000, "number of (noise, teacher sample) pairs")
    pair_steps: int = arg(24, "teacher's DPM-Solver++(2M) steps per pair, over all phases")
    phases: int = arg(4, "phases of the pair paths; a student rdK needs K to divide it")
    students: str = arg("rd,rf,rd2,rd4", "comma list of students: rd, rf, rd<K> (phased RD, K phases)")
    student_min: float = arg(0.0, "the first student's budget in training minutes (0: none); the others take its "
                             "step count")
    student_steps: int = arg(1000, "the first student's budget in steps (0: none)")
    student_lr: float = arg(2e-4, "students' peak Adam learning rate")
    student_ema: float = arg(0.995, "students' EMA decay per step (they start from the teacher's weights)")
    student_loss: str = arg("mse", "students' loss: mse (each form's own squared error: the teacher's prediction's "
                            "for rd and rdK, the velocity's for rf) or huber (pseudo-Huber on x̂0, the official RD "
                            "code's; students and tables get a suffix -huber)")
    student_seed: int = arg(0, "seed of the students' batches; other than 0, students and tables get a suffix -s<seed>")
    handover: float = arg(HANDOVER, "phased students: the last fraction (in λ) of each phase trained on the next "
                          "phase's pair, so that the sampler's query at each phase's start lies inside that phase's "
                          "training window (rd.rectify.phase_of); other than 0.3, phased students (K > 1) and their "
                          "tables get a suffix -h<value>")
    student_t: str = arg("late", "students' training times: late (towards where each is queried: rd and rf alike "
                         "t = t_max − (t_max − t_min)·u², towards t_max, where one call samples; phased students "
                         "the same law inside each phase, towards its start), schedule (each form's own: uniform t "
                         "on VP and FM, log-normal σ on EDM, which never reaches σ_max where a 1-call sample starts) "
                         "or uniform (RD's uniform in t: log-uniform σ on EDM); other than late, students and tables "
                         "get a suffix -t<value>")
    teacher_calls: str = arg("1,2,4,10,25", "network calls at which the teacher is evaluated")
    grid: str = arg("logsnr", "time grid of the teacher's and the plain students' sampling at eval: "
                    + ", ".join(GRIDS) + " (phased students keep their phase boundaries)")
    sampler: str = arg("dpm++2m", "multistep solver of the teacher and the plain students (one call: dpm++1; "
                       "dpm++3m at two calls: dpm++2m): " + ", ".join(EVAL_SAMPLERS))
    fid_n: int = arg(10_000, "samples per FID: 10000 (FID-10k) or 50000 (FID-50k)")
    cache: str = arg("", "folder for the decoded data set and the reference statistics ('': <out>/cache)")
    seed: int = arg(0, "seed of the teacher's batches and of the pairs' noise")


PRESETS = {
    "default": {},
    "smoke": dict(out="runs/cifar-smoke", data="random", inception="", unet="tiny", teacher_min=0.0, teacher_steps=10,
                  batch=4, warmup=3, compile=False, pairs=16, pair_steps=4, student_min=0.0, student_steps=5,
                  teacher_calls="1,2,4", fid_n=8),
}


def with_recipe(cfg: CifarConfig) -> CifarConfig:
    """cfg with --teacher_weight=auto and --lr=0 replaced by the form's (rd.predictions.TEACHER_RECIPES)."""
    weight, lr = teacher_recipe(cfg.form, cfg.teacher_weight, cfg.lr)
    return dataclasses.replace(cfg, teacher_weight=weight, lr=lr)


def check(cfg: CifarConfig) -> list[str]:
    """The stages to run; for bad settings, before any work, each flag and what to do, and exit status 2."""
    checks = FlagChecks("python -m rd.cifar", cfg)
    bad = checks.bad
    checks.one_of("form", FORMS, f"unknown teacher form; allowed: {', '.join(FORMS)}")
    try:
        UNetConfig.preset(cfg.unet)
    except ValueError as err:
        bad("unet", str(err))
    stages = parse_stages(cfg.stages, STAGES)
    if stages is None:
        bad("stages", f"use 'all' or a comma list of {', '.join(STAGES)}")
    checked = stages or STAGES                           # a bad --stages: the other flags checked as for all stages
    checks.at_least(0, "teacher_min", "student_min", "lr", "student_lr", "teacher_steps", "student_steps", "warmup")
    checks.at_least(1, "batch", "pairs", "pair_steps", "phases", "fid_n")
    if cfg.teacher_min == 0 and cfg.teacher_steps == 0:
        bad("teacher_min", "the teacher needs a budget: teacher_min > 0 or teacher_steps > 0")
    if cfg.student_min == 0 and cfg.student_steps == 0 and cfg.students:
        bad("student_min", "the students need a budget: student_min > 0 or student_steps > 0")
    checks.one_of("lr_decay", LR_DECAYS)
    checks.one_of("t_sampling", T_SAMPLINGS)
    checks.one_of("teacher_weight", ("", "auto", *PRED_TYPES),
                  f"allowed: auto (the form's), '' (the form's own), {', '.join(PRED_TYPES)}")
    checks.one_of("grid", GRIDS)
    checks.one_of("sampler", EVAL_SAMPLERS)
    checks.one_of("student_t", STUDENT_TIMES)
    checks.one_of("student_loss", LOSSES)
    for flag in ("ema_decay", "student_ema"):
        if not 0 <= getattr(cfg, flag) < 1:
            bad(flag, "an EMA decay lies in [0, 1)")
    if why := handover_problem(cfg.handover):
        bad("handover", why)
    for name in filter(None, (s.strip() for s in cfg.students.split(","))):
        if (k := student_phases(name)) is None:
            bad("students", f"unknown student {name!r}: use rd, rf or rd<K>")
        elif cfg.phases >= 1 and cfg.phases % k:
            bad("students", f"{name} needs phases divisible by {k} (--phases={cfg.phases})")
    if 1 <= cfg.pair_steps < cfg.phases:
        bad("pair_steps", f"needs at least one step per phase (--phases={cfg.phases})")
    try:
        calls = call_counts(cfg.teacher_calls)
    except ValueError:
        calls = []
    if not calls or min(calls) < 1:
        bad("teacher_calls", "a comma list of call counts ≥ 1, e.g. 1,2,4,10,25")
    if cfg.data != "random" and not Path(cfg.data).exists():
        bad("data", "no such file or folder; python -c 'import rd.data; rd.data.download(\"data\")' fetches "
                    "CIFAR-10 into data/cifar-10-batches-py: pass that folder (or --data=random)")
    checks.folder("out", "cache")
    if "eval" in checked and cfg.inception:
        if why := inception_problem(cfg.inception):
            bad("inception", why)
        if cfg.data == "random":
            bad("inception", "FID compares with CIFAR-10 (its test split, its train statistics), which --data=random "
                             "has not: pass --inception='' with random images")
        if cfg.data != "random" and cfg.fid_n >= 1 and cfg.fid_n not in (10_000, 50_000):
            bad("fid_n", "FID-10k or FID-50k: 10000 or 50000")
    if "eval" in (stages or []) and dist.env_world() > 1:
        bad("stages", "evaluate with one process (python -m rd.cifar --stages=eval), not under torchrun")
    checks.done()
    return stages


def load_data(cfg: CifarConfig, cache: Path):
    """uint8 CIFAR-10 train (N, 3, 32, 32) and labels, decoded once and cached; or 256 random images."""
    if cfg.data == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        return (torch.rand(256, 3, 32, 32, generator=g) * 255).to(torch.uint8), torch.zeros(256, dtype=torch.int64)
    return load_cifar10(cfg.data, "train", cache_dir=cache)


def run(cfg: CifarConfig):
    """Every stage of `cfg.stages`, in order; returns {(model, calls): FID} when the eval stage ran."""
    stages = check(cfg)
    cfg = with_recipe(cfg)
    ctx = dist.init()
    try:
        return _pipeline(cfg, stages, ctx)
    finally:
        dist.finish()


def _pipeline(cfg: CifarConfig, stages: list[str], ctx):
    device, out = ctx.device, Path(cfg.out)
    cache = Path(cfg.cache) if cfg.cache else out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    sfx = ((f"-s{cfg.student_seed}" if cfg.student_seed else "") + ("" if cfg.student_loss == "mse" else "-huber")
           + ("" if cfg.student_t == "late" else f"-t{cfg.student_t}"))
    students = [s.strip() for s in cfg.students.split(",") if s.strip()]
    phased = {name for name in students if (student_phases(name) or 1) > 1}      # the handover reaches these only
    hsfx = "" if cfg.handover == HANDOVER else f"-h{cfg.handover:g}"
    esfx = (sfx + (hsfx if phased else "") + ("" if cfg.grid == "logsnr" else f"-{cfg.grid}")   # beside, not over
            + ("" if cfg.sampler == "dpm++2m" else "-" + cfg.sampler.replace("+", "p")))
    laps = Laps(out / f"minutes{esfx}.json", write=ctx.main)      # minutes per stage, summed over invocations
    if ctx.main:
        atomic_write_text(json.dumps(dataclasses.asdict(cfg), indent=1), out / f"config{esfx}.json")
    schedule_name, pred = FORMS[cfg.form]
    schedule = get_schedule(schedule_name)
    folders = {name: out / f"{name}{sfx}{hsfx if name in phased else ''}" for name in students}

    def stop_if_last(stage):
        if stage == stages[-1]:
            if ctx.main:
                print(f"stage {stage} done; its outputs are in {out}/")
            sys.exit(0)

    # %% data and teacher
    with laps("data"):
        images, labels = load_data(cfg, cache)
        loader = GPULoader(images, labels, cfg.batch, device, flip=True, seed=cfg.seed)

    def teacher_batches(n, g):
        x0, _ = loader.sample(n, g)
        t = lognormal_t(schedule, n, g, device) if cfg.t_sampling == "lognormal" else schedule.sample_t(n, g, device)
        return x0, torch.randn(x0.shape, generator=g, device=device), t, None

    def train_cfg(warmup=cfg.warmup, **kw):
        return TrainConfig(batch=cfg.batch, warmup=warmup, amp="bf16" if device != "cpu" else "fp32",
                           lr_decay=cfg.lr_decay,
                           log_every=5 if cfg.data == "random" else 100, ckpt_every=1000,
                           channels_last=device != "cpu", **kw)

    torch.manual_seed(cfg.seed)
    model_cfg = UNetConfig.preset(cfg.unet)
    model_cfg.dropout = 0.0                                       # minutes-long runs: dropout only slows the start
    with laps("teacher"):
        teacher = train(UNet(model_cfg).to(device), schedule, pred, teacher_batches,
                        train_cfg(steps=cfg.teacher_steps or 10**9, max_minutes=cfg.teacher_min, lr=cfg.lr,
                                  ema_decay=cfg.ema_decay, compile=cfg.compile and device != "cpu", seed=cfg.seed,
                                  weight_like=cfg.teacher_weight or None),
                        out / "teacher", desc="teacher",
                        model_config=vars(model_cfg) | ({} if cfg.t_sampling == "schedule" else {"t_sampling": cfg.t_sampling}),
                        require_done="teacher" not in stages)
    stop_if_last("teacher")

    # %% pairs: ε once, the teacher's ODE to the clean sample through `phases` phases (bf16 network, fp32 state)
    rate_file = out / "pairs_rate.json"
    if "pairs" in stages:
        before = pairs_on_disk(out / "pairs")
        start = time.perf_counter()
        with laps("pairs"), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device != "cpu"):
            generate_pairs(teacher, schedule, pred, out / "pairs", cfg.pairs, (3, 32, 32), shard_size=5000,
                           solver="dpm++2m", steps=cfg.pair_steps, phases=cfg.phases, seed=cfg.seed, batch=2500,
                           device=device, progress=ctx.main)
        synchronize()
        made = pairs_on_disk(out / "pairs") - before
        if made > 0 and ctx.main:
            atomic_write_text(json.dumps({"pairs": made, "seconds": time.perf_counter() - start,
                                          "processes": ctx.world}), rate_file)
    stop_if_last("pairs")

    # %% students: same pairs, same recipe, RD's step count for all
    pairs = None                           # a finished student loads its checkpoint without them
    if students and "students" in stages:
        with laps("pairs (load)"):
            pairs = load_pairs(out / "pairs", schedule, (3, 32, 32)).to(device)

    def student_cfg(**kw):
        return train_cfg(warmup=student_warmup(cfg), lr=cfg.student_lr, ema_decay=cfg.student_ema,
                         seed=cfg.student_seed, loss=cfg.student_loss, **kw)

    nets = {}
    match = StepMatch(cfg.student_steps or 10**9, cfg.student_min, checkpoint_steps)   # the others: the first's steps
    for name in students:
        path = folders[name]
        if name == "rf":
            sch, p, net = get_schedule("fm"), "flow", flow_student(teacher).requires_grad_(True)
            times = student_times(cfg.student_t, sch)
            batches = pairs and flow_batches(pairs, sch, sample_t=times)
        else:
            sch, p, net, k = schedule, pred, copy.deepcopy(teacher), student_phases(name)
            times = student_times(cfg.student_t, schedule, k)
            batches = pairs and pair_batches(pairs.coarsen(k), schedule, cfg.handover, sample_t=times)
        recorded = ({"student_t": cfg.student_t} if times else {}) | (   # in the checkpoint: refuses others' students
            {"handover": cfg.handover} if name in phased and hsfx else {})
        with laps(path.name):
            nets[name] = (train(net, sch, p, batches and _cond_none(batches), student_cfg(**match.budget()), path,
                                model_config=recorded or None, desc=name,
                                require_done=pairs is None and "students"), sch, p)
        if name == students[0]:
            match.first_took(path / "ckpt.pt", [folders[o] / "ckpt.pt" for o in students[1:]])
    del pairs
    stop_if_last("students")

    # %% evaluation: each model at its call counts and with its sampler (rd.evaluate.eval_models)
    models = eval_models(cfg, (teacher, schedule, pred), nets)
    return evaluate(cfg, out, esfx, images, models, laps, device, cache, folders=folders)


def student_warmup(cfg: CifarConfig) -> int:
    """Every student's warm-up steps: --warmup, at most a fifth of --student_steps (a minute budget: --warmup)."""
    return min(cfg.warmup, max(1, cfg.student_steps // 5)) if cfg.student_steps else cfg.warmup


def _cond_none(batches):
    """(x0, ε, t) batches as rd.train's (x0, ε, t, cond) with no condition."""
    return lambda n, g: (*batches(n, g), None)


def main(argv=None):
    cfg = parse(CifarConfig, argv, __doc__.split("\n\n")[0], presets=PRESETS,
                prog="python -m rd.cifar")
    if dist.env_world() > 1 and not torch.cuda.is_available():
        raise SystemExit("rd.cifar: torchrun with WORLD_SIZE > 1 needs CUDA GPUs; on a CPU run one process")
    try:
        run(cfg)
    except (FileNotFoundError, UnreadableFile, ConfigMismatch) as err:   # missing, damaged, another run's: say, exit 1
        old = older_default(err.diff) if isinstance(err, ConfigMismatch) else None
        hint = (f" (a student of an older default: the pseudo-Huber loss before each form's own squared error, the "
                f"forms' own times before late ones; rename rd, rf, rd2, rd4 to rd{old[0]}, … and pass {old[1]})"
                if old else "")
        raise SystemExit(f"rd.cifar: {err}{hint}")


def older_default(diff: dict) -> tuple[str, str] | None:
    """(folder suffix, flags) that load a student trained at an older default, from the ConfigMismatch diff its
    folder gave: the pseudo-Huber loss (its train config says loss 'huber', this run's none, i.e. mse) and the forms'
    own times (no student_t in its model config); None when the folder differs in anything else."""
    model, train = diff.get("model"), diff.get("train")
    times = model == ({}, {"student_t": "late"})
    huber = (train is not None and (train[0] or {}).get("loss") == "huber"
             and {k: v for k, v in train[0].items() if k != "loss"} == train[1])
    if set(diff) - {"model", "train"} or (model and not times) or (train and not huber) or not (times or huber):
        return None
    parts = [("-huber", "--student_loss=huber")] * huber + [("-tschedule", "--student_t=schedule")] * times
    return "".join(s for s, _ in parts), " ".join(f for _, f in parts)


if __name__ == "__main__":
    main()
