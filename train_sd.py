"""A latent Stable-Diffusion-style text-to-image model, rectified without leaving its own form.  [RD Tab. 1, CFG]

    python train_sd.py                              # everything, offline: built-in captioned shapes, preset auto
    python train_sd.py --stages=teacher             # one stage, or a comma list; each resumes and skips what is done
    python train_sd.py --data=cifar10 --cifar=data/cifar10-jpg.tar.gz --inception=data/inception-2015-12-05-fp16.pt
    python train_sd.py --form=vp-sd-zsnr-v          # another teacher form (schedule + prediction type)

Stages (run folder --out): ae (KL autoencoder, 32 px → c×8×8 latents, c = 4 as SD or 8 on the gpu preset, SD's
scale factor measured from data; with --inception its reconstruction FID, every latent model's floor) →
teacher (UNet with cross-attention on a from-scratch text encoder, 10 % prompt dropout, in the form --form; by
default v-prediction on SD's scaled-linear VP schedule, as SD 2 trains, its loss weighed over t like ε's) → pairs
(DPM-Solver++(2M) with the teacher's classifier-free guidance, K phase states kept) → rd (the teacher's form on
(x̂0, ε)) → rf (flow matching + velocity from the same teacher, same pairs and steps) → phased (RD on the K phase
pairs; sampled with one first-order step per phase) → eval (FID of decoded images when Inception weights are given;
prompt fidelity = accuracy of an attribute classifier trained on real data; a prompts × methods × steps figure).
Every sample ends on the clean latent (σ = 0).
"""
import copy
import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rd import dist
from rd.cli import FlagChecks, arg, parse
from rd.data import GPULoader, from_uint8, to_uint8
from rd.dist import named_noise
from rd.fid import inception_problem
from rd.figures import save_grid
from rd.io import ConfigMismatch, UnreadableFile, atomic_write_text, config_changes, read_json
from rd.predictions import FORMS, PRED_TYPES, SIGMA_DATA, teacher_recipe
from rd.rectify import (HANDOVER, STUDENT_TIMES, flow_batches, flow_student, generate_pairs, handover_problem,
                       load_pairs, pair_batches, student_times)
from rd.schedules import get_schedule
from rd.sd.autoencoder import Autoencoder, AutoencoderConfig, decode_latents, encode_latents, latent_scale
from rd.sd.data import eval_prompts, train_images
from rd.sd.evaluate import EvalSettings, autoencoder_floor, evaluate
from rd.sd.latent import LATENT_FORMS, TextUNet, drop_prompts, generate_latents
from rd.sd.shapes import PROMPTS
from rd.sd.text import TextEncoder, TextEncoderConfig, Tokenizer
from rd.stages import Laps, StepMatch, parse_stages
from rd.train import TrainConfig, checkpoint_steps, train
from rd.unet import UNet, UNetConfig

STAGES = ("ae", "teacher", "pairs", "rd", "rf", "phased", "eval")


@dataclass
class Args:
    preset: str = arg("auto", "sizes to start from: auto (gpu if CUDA is present, else cpu), cpu (the defaults "
                      "below), gpu or tiny (the tests); the size flags override them")
    data: str = arg("shapes", "shapes (built-in, procedural, captioned) or cifar10")
    cifar: str = arg("data/cifar10-jpg.tar.gz", "CIFAR-10: pickles folder, image folder or its .tar.gz (--data=cifar10)")
    inception: str = arg("", "TF-Inception TorchScript file for FID (empty: no FID, fidelity only)")
    form: str = arg("vp-sd-v", "teacher form, a schedule and prediction type by name as in rd.cifar: "
                    + ", ".join(LATENT_FORMS) + "; RD students keep it, RF converts to flow matching")
    teacher_weight: str = arg("auto", "weigh the teacher's loss over t like another prediction type's, e.g. eps on a "
                              "v form (rd.predictions.loss_weight); '': the form's own; auto: the form's "
                              "(rd.predictions.TEACHER_RECIPES: eps for vp-sd-v)")
    out: str = arg("", "run folder: config, logs, checkpoints, grids, results (empty: runs/sd-<preset>-<form>, e.g. "
                   "runs/sd-cpu-vp-sd-v; a teacher weight other than auto adds -loss-<weight>)")
    stages: str = arg("all", "'all' or a comma list of " + ", ".join(STAGES) + " (run in that order; each resumes "
                      "or skips what is done)")
    guidance: float = arg(3.0, "classifier-free guidance scale of the teacher (pairs and teacher samples)")
    phases: int = arg(4, "K of phased RD (the pairs keep K + 1 states; RD and RF use the ends)")
    student_t: str = arg("schedule", "the students' training times: " + ", ".join(STUDENT_TIMES) + " (rd.rectify."
                         "student_times; late: towards where each is queried, t_max for RD and RF, where one call "
                         "samples, each phase's start for phased RD; rd.cifar's default, here level with schedule "
                         "on the shapes and not measured at the gpu preset)")
    handover: float = arg(HANDOVER, "phased RD: the last fraction (in λ) of each phase trained on the next phase's "
                          "pair, so that the sampler's query at each phase's start lies inside that phase's training "
                          "window (rd.rectify.phase_of)")
    seed: int = arg(0, "seeds data, training, pairs and evaluation")
    time_scale: float = arg(1.0, "multiplies the minute caps (--ae_min, --teacher_min, --student_min), e.g. 0.3 for a "
                            "short GPU run")
    batch_per_process: bool = arg(False, "under torchrun, --batch is each process's (the global batch grows with the "
                                  "processes); default: the global batch, split over them")
    compile: bool = arg(True, "torch.compile the teacher and students on a GPU (a minute once, then faster steps)")
    # sizes: the defaults are the cpu preset; a run folder keeps those it began with (config.json's "size")
    n_train: int = arg(20_000, "shapes to render (CIFAR-10 uses its 50,000)")
    ae: str = arg("tiny", "autoencoder preset (rd.sd.autoencoder.AutoencoderConfig.preset)")
    latent_channels: int = arg(4, "channels of the autoencoder's latents (4 as SD)")
    ae_steps: int = arg(800, "autoencoder steps (a minute cap may stop it first)")
    channels: int = arg(32, "latent UNet width (a multiple of 32)")
    text_dim: int = arg(64, "text encoder width (= the UNet's context_dim; a multiple of its 4 heads)")
    batch: int = arg(64, "global batch of every training stage, split over torchrun's processes unless "
                     "--batch_per_process")
    teacher_steps: int = arg(3000, "teacher steps (a minute cap may stop it first)")
    n_pairs: int = arg(2000, "pairs from the teacher")
    pair_steps: int = arg(28, "DPM-Solver++(2M) steps per pair, over all phases")
    student_steps: int = arg(400, "RD's steps (a minute cap may stop it first); RF and phased RD take as many as RD "
                             "took")
    clf_steps: int = arg(300, "attribute-classifier steps")
    n_eval: int = arg(1000, "samples per (model, calls) in the evaluation")
    ae_min: float = arg(0.0, "autoencoder's training-time cap in minutes, × --time_scale (0: none)")
    teacher_min: float = arg(0.0, "teacher's training-time cap in minutes, × --time_scale (0: none)")
    student_min: float = arg(0.0, "RD's training-time cap in minutes, × --time_scale (0: none)")


SIZES = ("n_train", "ae", "latent_channels", "ae_steps", "channels", "text_dim", "batch", "teacher_steps", "n_pairs",
         "pair_steps", "student_steps", "clf_steps", "n_eval", "ae_min", "teacher_min", "student_min")
MINUTES = ("ae_min", "teacher_min", "student_min")      # the sizes that may be 0 (no cap)

PRESETS = {
    "cpu": {},                                                     # 9–27 minutes on 2 CPU cores, by machine
    # ≈ 25 GPU-minutes in all: the minute caps bind before the step counts
    "gpu": dict(n_train=50_000, ae="base", latent_channels=8, ae_steps=20_000, channels=128, text_dim=256, batch=256,
                teacher_steps=100_000, n_pairs=25_000, pair_steps=28, student_steps=20_000, clf_steps=2000,
                n_eval=10_000, ae_min=2.0, teacher_min=12.0, student_min=2.5),
    "tiny": dict(n_train=256, ae="tiny", ae_steps=12, channels=32, text_dim=32, batch=16, teacher_steps=12, n_pairs=48,
                 pair_steps=8, student_steps=6, clf_steps=10, n_eval=24),
}


def parse_args(argv=None) -> Args:
    """--flag=value for every Args field (its help and default in --help) over the preset's sizes; unknown or bad
    flags are an error. --preset=auto comes back as the preset it stands for on this machine."""
    auto = "gpu" if torch.cuda.is_available() else "cpu"
    args = parse(Args, argv, __doc__.split("\n\n")[0], presets={"auto": PRESETS[auto]} | PRESETS, prog="train_sd.py")
    args = dataclasses.replace(args, preset=auto) if args.preset == "auto" else args
    checks = FlagChecks("train_sd.py", args)
    checks.one_of("data", ("shapes", "cifar10"))
    why = (f"EDM's preconditioning assumes data of std σ_d = {SIGMA_DATA}, these latents have std 1; "
           if args.form in FORMS else "")
    checks.one_of("form", LATENT_FORMS, f"{why}allowed: {', '.join(LATENT_FORMS)}")
    stages = parse_stages(args.stages, STAGES)
    if not stages:
        checks.bad("stages", f"use 'all' or a comma list of {', '.join(STAGES)}")
    checks.one_of("teacher_weight", ("auto", "", *PRED_TYPES),
                  f"allowed: auto (the form's), '' (the form's own), {', '.join(PRED_TYPES)}")
    checks.one_of("student_t", STUDENT_TIMES)
    if why := handover_problem(args.handover):
        checks.bad("handover", why)
    checks.at_least(1, "phases", "guidance", *(k for k in SIZES if k not in MINUTES and k != "ae"))
    checks.at_least(0, *MINUTES)
    if not args.time_scale > 0:
        checks.bad("time_scale", "must be > 0")
    if 1 <= args.pair_steps < args.phases:
        checks.bad("pair_steps", f"needs at least one step per phase (--phases={args.phases})")
    if args.channels % 32:                                                  # the UNet's GroupNorms
        checks.bad("channels", "must be a multiple of 32")
    if args.text_dim % TextEncoderConfig.heads:
        checks.bad("text_dim", f"must be a multiple of the text encoder's {TextEncoderConfig.heads} heads")
    try:
        AutoencoderConfig.preset(args.ae)
    except ValueError as err:
        checks.bad("ae", str(err))
    checks.folder("out")
    if args.inception and {"ae", "eval"} & set(stages or STAGES) and (why := inception_problem(args.inception)):
        checks.bad("inception", why)                           # checked now, not after an hour of training
    checks.done()
    return args


def main(argv=None):
    args = parse_args(argv)
    if dist.env_world() > 1 and not torch.cuda.is_available():
        raise SystemExit("train_sd.py: torchrun with WORLD_SIZE > 1 needs CUDA GPUs (one process per GPU, NCCL); "
                         "on a CPU run it as one process: python train_sd.py")
    ctx = dist.init()
    try:
        pipeline(args, ctx)
    finally:
        dist.finish()


def pipeline(args: Args, ctx: dist.Context):
    """The stages in order (each resumes or skips); under torchrun every process runs this, process 0 writes."""
    device = ctx.device
    say = print if ctx.main else (lambda *a, **k: None)
    weight, _ = teacher_recipe(args.form, args.teacher_weight)       # its own learning rate: 3e-4 below
    out = Path(args.out or f"runs/sd-{args.preset}-{args.form}" + ("" if args.teacher_weight == "auto" else f"-loss-{weight or 'own'}"))
    stages = parse_stages(args.stages, STAGES)
    run, last = (lambda name: name in stages), stages[-1]                                # noqa: E731
    # what a run folder is tied to: not where it is, the stages to run, --time_scale (each stage's checkpoint keeps
    # the caps it ran under), the Inception file (evaluation only), --preset=auto vs its resolution, or compiling;
    # the preset by its name and the SIZES flags by their values (in "size": a preset's and the flags' are one run)
    free = dict.fromkeys(("out", "stages", "time_scale", "inception", "preset", "compile", *SIZES))
    config = json.loads(json.dumps({"args": dataclasses.asdict(args) | free, "preset": args.preset,
                                    "size": {k: getattr(args, k) for k in SIZES}}))   # as config.json reads back
    old = (with_defaults(read_json(out / "config.json", f"delete {out} to start over, or pass another --out"), free)
           if (out / "config.json").exists() else config)
    if old != config:                       # the flags that give the run's own config: its preset, its sizes
        flags, base = [], config["size"]
        if (preset := old.get("preset", args.preset)) != args.preset:    # then its sizes that differ from its preset's
            flags, base = [f"--preset={preset}"], dataclasses.asdict(Args()) | PRESETS.get(preset, {})
        own = " ".join(flags + [f"--{k}={old['size'][k]}" for k in SIZES if old["size"][k] != base[k]])
        gone = [f"--{k}" for k in old["args"] if k not in config["args"]]       # set by an older train_sd.py only
        raise SystemExit(f"{out} holds a run with another configuration ({out / 'config.json'}: "
                         f"{config_changes(old, config)}); "
                         + (f"{', '.join(gone)}: set by an older train_sd.py, which this one cannot; " if gone else "")
                         + (f"rerun with its flags ({own}), " if own and not gone else "")
                         + "pass another --out, or delete the folder to start over")
    if not args.batch_per_process and args.batch % ctx.world:
        raise SystemExit(f"train_sd.py: a batch of {args.batch} does not split over {ctx.world} processes; pass a "
                         f"--batch divisible by {ctx.world}, or --batch_per_process=true")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(config, indent=1), out / "config.json")
    dist.barrier()
    say(f"train_sd.py: preset {args.preset} on {device} × {ctx.world} process{'es' * (ctx.world > 1)}, teacher form "
        f"{args.form}, data {args.data}, run folder {out}, stages {','.join(stages)}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    settings = EvalSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalSettings)})
    lap = Laps(out / "minutes.json", ctx.main)      # minutes per stage, summed over invocations (SIGTERM'd ones too)
    with lap("data"):
        if not ctx.main:
            dist.barrier()                           # process 0 decodes and caches the data first
        images, attrs, caps = train_images(args.data, args.n_train, args.seed, args.cifar, out / "cache")
        if ctx.main:
            dist.barrier()
    tokenizer = Tokenizer.from_texts(caps + eval_prompts(args.data, 64, args.seed)[1] + list(PROMPTS))
    length = max(len(tokenizer.words(c)) for c in caps) + 2
    tokens = tokenizer.encode(caps, length).to(device)                                   # (N, L)

    def cfg(steps, lr, minutes, **kw):
        return TrainConfig(**dict(steps=steps, batch=dist.global_batch(args.batch, ctx.world, args.batch_per_process),
                                  lr=lr, warmup=min(200, steps // 5 + 1), ema_decay=0.999, seed=args.seed,
                                  amp="fp32" if device == "cpu" else "bf16", channels_last=False,
                                  compile=args.compile and device != "cpu", log_every=max(1, min(100, steps // 10)),
                                  ckpt_every=max(1, min(500, steps // 4)), max_minutes=minutes * args.time_scale) | kw)

    # -- ae: the first stage, trained on images; latents = scale · E[q(z|x)]
    loader = GPULoader(images, attrs[:, 0], args.batch, device, flip=args.data == "cifar10", seed=args.seed)
    ae_cfg = dataclasses.replace(AutoencoderConfig.preset(args.ae), latent_channels=args.latent_channels)
    torch.manual_seed(args.seed)
    with lap("ae"):
        ae = train(Autoencoder(ae_cfg).to(device), None, None, lambda n, g: loader.sample(n, g)[0],
                   cfg(args.ae_steps, 1e-3, args.ae_min, compile=False), out / "ae",
                   model_config=dataclasses.asdict(ae_cfg),
                   desc="ae", require_done=not run("ae"), loss_fn=lambda model, x: model.loss(x)[0])
        x_all = from_uint8(images.to(device))
        scale = latent_scale(ae, x_all[:5000])
        latents = encode_latents(ae, x_all, scale)                                       # (N, c, 8, 8)
        if ctx.main and not (out / "ae" / "grid.png").exists():      # 32 images above their reconstructions
            recon = decode_latents(ae, latents[:32], scale)
            save_grid(to_uint8(torch.cat([x_all[:32], recon])), out / "ae" / "grid.png")
        if ctx.main and args.inception and run("ae") and not (out / "ae" / "floor.json").exists():
            floor = autoencoder_floor(settings, args.n_eval, ae, scale, images, out, device)
            say(f"ae: reconstructions of {floor['images']} held-out images score FID {floor['fid']:.2f} (every "
                "latent model's floor)")
        dist.barrier()                               # the other processes wait for process 0's floor
    if last == "ae":
        return say(f"ae done: latent scale {scale:.4f}, latents {tuple(latents.shape)}")
    n_grid = min(64, args.n_eval)
    grid_tokens = tokenizer.encode(eval_prompts(args.data, args.n_eval, args.seed)[1][:n_grid], length).to(device)
    grid_noise = named_noise(args.seed, "grid noise", (n_grid, *latents.shape[1:])).to(device)   # no pair's ε

    def grid(stage, net, sch, pred_type, calls, w=1.0, phased=False):
        """The stage's samples (process 0, once): the first min(64, n_eval) evaluation prompts, the same noise."""
        if ctx.main and not (out / stage / "grid.png").exists():
            z = generate_latents(net, grid_noise, sch, pred_type, calls, grid_tokens, guidance=w, phased=phased)
            save_grid(to_uint8(decode_latents(ae, z, scale)), out / stage / "grid.png")

    # -- teacher: the form's schedule and prediction type (in its checkpoint's config: another form's is refused), the
    # text tower trained from scratch with it, 10 % of prompts dropped
    schedule_name, pred = FORMS[args.form]
    schedule = get_schedule(schedule_name)
    unet_cfg = UNetConfig(in_channels=latents.shape[1], resolution=latents.shape[-1], channels=args.channels,
                          ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(latents.shape[-1], latents.shape[-1] // 2),
                          dropout=0.0, context_dim=args.text_dim)
    text_cfg = TextEncoderConfig(vocab_size=len(tokenizer.vocab), length=length, dim=args.text_dim)

    def teacher_batches(n, g):
        idx = torch.randint(len(latents), (n,), generator=g, device=g.device).to(device)
        z0 = latents[idx]                                                                # (B, c, 8, 8)
        return z0, torch.randn(z0.shape, generator=g, device=device), schedule.sample_t(n, g, device=device), \
            drop_prompts(tokens[idx], 0.1, g)

    torch.manual_seed(args.seed)
    with lap("teacher"):
        teacher = train(TextUNet(UNet(unet_cfg), TextEncoder(text_cfg)).to(device), schedule, pred, teacher_batches,
                        cfg(args.teacher_steps, 3e-4, args.teacher_min, weight_like=weight or None),
                        out / "teacher", desc="teacher", require_done=not run("teacher"),
                        model_config={"unet": dataclasses.asdict(unet_cfg), "text": dataclasses.asdict(text_cfg),
                                      "vocab": tokenizer.vocab})
        grid("teacher", teacher, schedule, pred, 25, args.guidance)
    if last == "teacher":
        return say("teacher done")

    # -- pairs: prompts drawn from the captions, the teacher's guided ODE, K + 1 states per pair
    prompt_idx = torch.randint(len(caps), (args.n_pairs,), generator=torch.Generator().manual_seed(args.seed + 1))
    shape = tuple(latents.shape[1:])
    with lap("pairs"):
        if run("pairs"):
            generate_pairs(teacher, schedule, pred, out / "pairs", args.n_pairs, shape,
                           shard_size=max(16, args.n_pairs // 20), steps=args.pair_steps, phases=args.phases,
                           seed=args.seed, batch=2000, device=device, cond=tokens[prompt_idx.to(device)].cpu(),
                           null_cond=torch.zeros(length, dtype=torch.int64), guidance=args.guidance)
        pairs = load_pairs(out / "pairs", schedule, shape).to(device)
        if ctx.main and not (out / "pairs" / "grid.png").exists():   # the teacher's x̂0 of the first 64 pairs
            save_grid(to_uint8(decode_latents(ae, pairs.x_path[:64, -1], scale)), out / "pairs" / "grid.png")
    if last == "pairs":
        return say(f"pairs done: {len(pairs.eps)} in {out / 'pairs'}")

    # -- students: same pairs, same steps; RD and phased RD keep the teacher's form, RF is FM + velocity; phased RD
    # samples with one first-order step per phase (generate_latents(phased=True))
    fm, times = get_schedule("fm"), functools.partial(student_times, args.student_t)    # None: each form's own times
    students = {
        "RD": (lambda: copy.deepcopy(teacher), schedule, pred,
               pair_batches(pairs.endpoints(), schedule, sample_t=times(schedule))),
        "RF": (lambda: flow_student(teacher), fm, "flow", flow_batches(pairs, fm, sample_t=times(fm))),
        f"phased RD (K={args.phases})": (lambda: copy.deepcopy(teacher), schedule, pred,
                                         pair_batches(pairs, schedule, args.handover,
                                                      sample_t=times(schedule, args.phases))),
    }
    recipe = cfg(args.student_steps, 1e-4, args.student_min)     # RD's budget; RF and phased RD take RD's steps
    trained, match = {}, StepMatch(recipe.steps, recipe.max_minutes, checkpoint_steps)
    for (name, (init, sch, pred_type, batches)), stage in zip(students.items(), ("rd", "rf", "phased")):
        student_cfg = dataclasses.replace(recipe, **match.budget())         # same recipe (warm-up, intervals)
        with lap(stage):
            trained[name] = train(init().requires_grad_(True), sch, pred_type, batches, student_cfg, out / stage,
                                  desc=stage, require_done=not run(stage))
            phased = stage == "phased"
            grid(stage, trained[name], sch, pred_type, args.phases if phased else 1, phased=phased)
        if stage == "rd":
            match.first_took(out / stage / "ckpt.pt", [out / o / "ckpt.pt" for o in ("rf", "phased")])
        if last == stage:
            return say(f"{stage} done")

    # -- eval (process 0)
    if not ctx.main:
        return
    # name: (network, schedule, prediction type, CFG scale, phased)
    models = {"teacher": (teacher, schedule, pred, args.guidance, False)} | \
             {name: (net, sch, p, 1.0, name.startswith("phased"))
              for (name, net), (_, sch, p, _) in zip(trained.items(), students.values())}
    with lap("eval"):
        evaluate(settings, args.n_eval, args.clf_steps, out, device, images, attrs, tokenizer, length, ae, scale, models)
    print(lap.table())
    if args.preset == "tiny":
        print("preset tiny: a test-sized run (a few steps per stage) that shows the pipeline works end to end; its "
              "fidelities and losses say nothing about the models (use the cpu or gpu preset for those)")
    where = f"{torch.cuda.get_device_name() if device != 'cpu' else 'CPU'}, {ctx.world} process{'es' * (ctx.world > 1)}"
    atomic_write_text((out / "results.md").read_text() + f"\n{lap.table()} ({where})\n", out / "results.md")


def with_defaults(old: dict, free: dict) -> dict:
    """A run folder's config.json with every field of Args it lacks at its default value (what a run without that
    field used) — or, for a field that does not tie a run folder (`free`), as None; a flag Args does not have is
    dropped when it is None and ties the run otherwise."""
    defaults = {f.name: f.default for f in dataclasses.fields(Args)}
    args = {k: None if k in free else v for k, v in defaults.items()}
    kept = {k: v for k, v in old.get("args", {}).items() if k in args or v is not None}   # an untied old flag: gone
    return old | {"args": args | kept, "size": {k: defaults[k] for k in SIZES} | old.get("size", {})}


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, UnreadableFile, ConfigMismatch) as err:  # missing, damaged, another run's: say, exit 1
        sys.exit(f"train_sd.py: {err}")
