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
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rd import dist
from rd.cli import arg, parse, parse_stages
from rd.data import CIFAR_CLASSES, GPULoader, from_uint8, load_cifar10, to_uint8
from rd.fid import check_inception_file, fid
from rd.figures import save_grid
from rd.io import ConfigMismatch, UnreadableFile, atomic_write_text, config_changes, not_a_folder, read_json
from rd.predictions import FORMS, PRED_TYPES, SIGMA_DATA, teacher_recipe
from rd.rectify import flow_batches, flow_student, generate_pairs, load_pairs, pair_batches
from rd.schedules import get_schedule
from rd.sd.autoencoder import Autoencoder, AutoencoderConfig, decode_latents, encode_latents, latent_scale
from rd.sd.evaluate import EvalSettings, eval_prompts, evaluate, fid_reference, held_out_images, reconstruct
from rd.sd.latent import TextUNet, drop_prompts, generate_latents
from rd.sd.shapes import PROMPTS, captions, make_shapes
from rd.sd.text import TextEncoder, TextEncoderConfig, Tokenizer
from rd.timing import Laps
from rd.train import TrainConfig, read_checkpoint, train
from rd.unet import UNet, UNetConfig

STAGES = ("ae", "teacher", "pairs", "rd", "rf", "phased", "eval")
# the teacher forms of rd.predictions.FORMS that suit latents: EDM's preconditioning assumes data of std σ_d = 0.5,
# SD-scaled latents have std 1
LATENT_FORMS = tuple(name for name, (_, pred) in FORMS.items() if pred != "edm")
TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a small {}", "a photo of the {}")


@dataclass
class Args:
    preset: str = arg("auto", "auto (gpu if CUDA is present, else cpu), cpu, gpu, tiny (tests)")
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
    seed: int = arg(0, "seeds data, training, pairs and evaluation")
    time_scale: float = arg(1.0, "multiplies the preset's per-stage minute caps (e.g. 0.3 for a short GPU run)")
    latent_channels: int = arg(0, "channels of the autoencoder's latents (0: the preset's: 4 as SD, 8 on gpu)")
    batch: int = arg(0, "global batch of every training stage, split over torchrun's processes unless "
                     "--batch_per_process (0: the preset's); a run folder keeps the sizes it began with")
    ae_steps: int = arg(0, "autoencoder steps; a minute cap may stop it first (0: the preset's, not 'no budget')")
    teacher_steps: int = arg(0, "teacher steps; a minute cap may stop it first (0: the preset's)")
    n_pairs: int = arg(0, "pairs from the teacher (0: the preset's)")
    student_steps: int = arg(0, "RD's steps (a minute cap may stop it first); RF and phased RD take as many as RD "
                             "took (0: the preset's)")
    batch_per_process: bool = arg(False, "under torchrun, the batch (--batch or the preset's) is each process's (the "
                                  "global batch grows with the processes); default: the global batch, split over them")
    compile: bool = arg(True, "torch.compile the teacher and students on a GPU (a minute once, then faster steps)")


@dataclass
class Preset:
    n_train: int                  # shapes to render (CIFAR-10 uses its 50,000)
    ae: str                       # AutoencoderConfig preset
    ae_steps: int                 # autoencoder steps
    channels: int                 # latent UNet width
    text_dim: int                 # text encoder width (= UNet context_dim)
    batch: int                    # batch of every training stage
    teacher_steps: int            # teacher steps
    n_pairs: int                  # pairs from the teacher
    pair_steps: int               # DPM-Solver++(2M) steps per pair (over all phases)
    student_steps: int            # steps of each student (RD, RF, phased)
    clf_steps: int                # attribute-classifier steps
    n_eval: int                   # samples per (model, calls) in the evaluation
    minutes: tuple = (0, 0, 0)    # training-time caps of (ae, teacher, each student) in minutes (0: none)
    latent_channels: int = 4      # channels of the autoencoder's latents


SIZES = ("latent_channels", "batch", "ae_steps", "teacher_steps", "n_pairs", "student_steps")   # flags over the preset

PRESETS = {
    "tiny": Preset(n_train=256, ae="tiny", ae_steps=12, channels=32, text_dim=32, batch=16, teacher_steps=12,
                   n_pairs=48, pair_steps=8, student_steps=6, clf_steps=10, n_eval=24),
    "cpu": Preset(n_train=20_000, ae="tiny", ae_steps=800, channels=32, text_dim=64, batch=64, teacher_steps=3000,
                  n_pairs=2000, pair_steps=28, student_steps=400, clf_steps=300, n_eval=1000),
    # ≈ 25 GPU-minutes in all: the minute caps bind before the step counts
    "gpu": Preset(n_train=50_000, ae="base", ae_steps=20_000, channels=128, text_dim=256, batch=256,
                  teacher_steps=100_000, n_pairs=25_000, pair_steps=28, student_steps=20_000, clf_steps=2000,
                  n_eval=10_000, minutes=(2, 12, 2.5), latent_channels=8),
}


def parse_args(argv=None) -> Args:
    """--flag=value for every Args field (its help and default in --help); unknown or bad flags are an error."""
    args = parse(Args, argv, __doc__.split("\n\n")[0], prog="train_sd.py")
    problems = [f"--preset must be auto, {', '.join(PRESETS)}; got {args.preset!r}"] * (args.preset not in ("auto", *PRESETS))
    problems += [f"--data must be shapes or cifar10; got {args.data!r}"] * (args.data not in ("shapes", "cifar10"))
    if args.form not in LATENT_FORMS:
        why = (f" (EDM's preconditioning assumes data of std σ_d = {SIGMA_DATA}; these latents have std 1)"
               if args.form in FORMS else "")
        problems.append(f"--form must be one of {', '.join(LATENT_FORMS)}; got {args.form!r}{why}")
    stages = parse_stages(args.stages, STAGES) or []
    problems += [f"--stages must be all or a comma list of {', '.join(STAGES)}; got {args.stages!r}"] * (not stages)
    if args.teacher_weight not in ("auto", "", *PRED_TYPES):
        problems.append(f"--teacher_weight must be auto, '' or one of {', '.join(PRED_TYPES)}; got {args.teacher_weight!r}")
    if args.phases < 1 or args.guidance < 1 or not args.time_scale > 0 or args.latent_channels < 0:
        problems.append(f"need --phases ≥ 1, --guidance ≥ 1, --time_scale > 0 and --latent_channels ≥ 0; got "
                        f"{args.phases}, {args.guidance}, {args.time_scale}, {args.latent_channels}")
    problems += [f"--{k} must be ≥ 0 (0: the preset's); got {getattr(args, k)}" for k in SIZES[1:] if getattr(args, k) < 0]
    if args.out and (file := not_a_folder(args.out)):
        problems.append(f"--out={args.out!r}: {file} is a file, not a folder; pass a folder (it is made if missing)")
    if args.inception and {"ae", "eval"} & set(stages):          # checked now, not after an hour of training
        try:
            check_inception_file(args.inception)
        except FileNotFoundError:
            problems.append(f"--inception={args.inception!r}: no such file; DATA.md says where to get the FID "
                            "network inception-2015-12-05-fp16.pt, or pass --inception='' for no FID")
        except UnreadableFile as err:
            problems.append(f"--inception={args.inception!r}: {err}, or pass --inception='' for no FID")
    if problems:
        print(f"train_sd.py: error: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)
    return args


def load_data(args: Args, size: Preset, out: Path):
    """Training images uint8 (N, 3, 32, 32), attributes (N, A) for the fidelity classifier, and captions."""
    if args.data == "shapes":
        images, attrs = make_shapes(size.n_train, seed=args.seed)
        return images, attrs, captions(attrs)
    images, labels = load_cifar10(args.cifar, "train", cache_dir=out / "cache", strict=size.n_train >= 50_000)
    caps = [TEMPLATES[i % len(TEMPLATES)].format(CIFAR_CLASSES[y]) for i, y in enumerate(labels.tolist())]
    return images, labels[:, None], caps


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
    preset = args.preset if args.preset != "auto" else ("gpu" if device != "cpu" else "cpu")
    size = PRESETS[preset]
    weight, _ = teacher_recipe(args.form, args.teacher_weight)       # its own learning rate: 3e-4 below
    out = Path(args.out or f"runs/sd-{preset}-{args.form}" + ("" if args.teacher_weight == "auto" else f"-loss-{weight or 'own'}"))
    stages = parse_stages(args.stages, STAGES)
    run, last = (lambda name: name in stages), stages[-1]                                # noqa: E731
    # what a run folder is tied to: not where it is, the stages to run, the time caps (each stage's checkpoint keeps
    # its own), the Inception file (evaluation only), --preset=auto vs its resolution, or compiling; the SIZES flags
    # are tied by their resolved values, in size
    free = {"out": None, "stages": None, "time_scale": None, "inception": None, "preset": None, "compile": None,
            **dict.fromkeys(SIZES)}
    size = dataclasses.replace(size, **{k: getattr(args, k) for k in SIZES if getattr(args, k)})
    config = json.loads(json.dumps({"args": dataclasses.asdict(args) | free, "preset": preset,
                                    "size": dataclasses.asdict(size)}))                # as config.json reads back
    old = (with_defaults(read_json(out / "config.json", f"delete {out} to start over, or pass another --out"), free)
           if (out / "config.json").exists() else config)
    if old != config:
        own = " ".join(f"--{k}={old['size'][k]}" for k in SIZES
                       if k in old["size"] and old["size"][k] != config["size"][k])
        raise SystemExit(f"{out} holds a run with another configuration ({out / 'config.json'}: "
                         f"{config_changes(old, config)}); " + (f"rerun with its sizes ({own}), " if own else "")
                         + "pass another --out, or delete the folder to start over")
    if not args.batch_per_process and size.batch % ctx.world:
        raise SystemExit(f"train_sd.py: a batch of {size.batch} does not split over {ctx.world} processes; pass a "
                         f"--batch divisible by {ctx.world}, or --batch_per_process=true")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(config, indent=1), out / "config.json")
    dist.barrier()
    say(f"train_sd.py: preset {preset} on {device} × {ctx.world} process{'es' * (ctx.world > 1)}, teacher form "
        f"{args.form}, data {args.data}, run folder {out}, stages {','.join(stages)}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    lap = Laps(out / "minutes.json", ctx.main)      # minutes per stage, summed over invocations (SIGTERM'd ones too)
    with lap("data"):
        if not ctx.main:
            dist.barrier()                           # process 0 decodes and caches the data first
        images, attrs, caps = load_data(args, size, out)
        if ctx.main:
            dist.barrier()
    tokenizer = Tokenizer.from_texts(caps + eval_prompts(args.data, 64, args.seed)[1] + list(PROMPTS))
    length = max(len(tokenizer.words(c)) for c in caps) + 2
    tokens = tokenizer.encode(caps, length).to(device)                                   # (N, L)

    def cfg(steps, lr, minutes, **kw):
        return TrainConfig(**dict(steps=steps, batch=global_batch(args, size, ctx.world), lr=lr,
                                  warmup=min(200, steps // 5 + 1), ema_decay=0.999, seed=args.seed,
                                  amp="fp32" if device == "cpu" else "bf16", channels_last=False,
                                  compile=args.compile and device != "cpu", log_every=max(1, min(100, steps // 10)),
                                  ckpt_every=max(1, min(500, steps // 4)), max_minutes=minutes * args.time_scale) | kw)

    # -- ae: the first stage, trained on images; latents = scale · E[q(z|x)]
    loader = GPULoader(images, attrs[:, 0], size.batch, device, flip=args.data == "cifar10", seed=args.seed)
    ae_cfg = dataclasses.replace(AutoencoderConfig.preset(size.ae), latent_channels=size.latent_channels)
    torch.manual_seed(args.seed)
    with lap("ae"):
        ae = train(Autoencoder(ae_cfg).to(device), None, None, lambda n, g: loader.sample(n, g)[0],
                   cfg(size.ae_steps, 1e-3, size.minutes[0], compile=False), out / "ae",
                   model_config=dataclasses.asdict(ae_cfg),
                   desc="ae", require_done=not run("ae"), loss_fn=lambda model, x: model.loss(x)[0])
        x_all = from_uint8(images.to(device))
        scale = latent_scale(ae, x_all[:5000])
        latents = encode_latents(ae, x_all, scale)                                       # (N, c, 8, 8)
        if ctx.main and not (out / "ae" / "grid.png").exists():      # 32 images above their reconstructions
            recon = decode_latents(ae, latents[:32], scale)
            save_grid(to_uint8(torch.cat([x_all[:32], recon])), out / "ae" / "grid.png")
        if ctx.main and args.inception and run("ae") and not (out / "ae" / "floor.json").exists():
            inception, ref = fid_reference(args.inception, args.data, images, out / "cache", device)
            held_out, _ = held_out_images(args.data, size.n_eval, args.seed, args.cifar, out / "cache")
            floor = fid(reconstruct(ae, held_out, scale, device), *ref, inception, device=device, progress=False)
            atomic_write_text(json.dumps({"fid": floor, "images": len(held_out)}), out / "ae" / "floor.json")
            say(f"ae: reconstructions of {len(held_out)} held-out images score FID {floor:.2f} (every latent "
                "model's floor)")
        dist.barrier()                               # the other processes wait for process 0's floor
    if last == "ae":
        return say(f"ae done: latent scale {scale:.4f}, latents {tuple(latents.shape)}")
    n_grid = min(64, size.n_eval)
    grid_tokens = tokenizer.encode(eval_prompts(args.data, size.n_eval, args.seed)[1][:n_grid], length).to(device)
    grid_noise = torch.randn(n_grid, *latents.shape[1:], generator=torch.Generator().manual_seed(args.seed + 3)).to(device)

    def grid(stage, net, sch, pred_type, calls, w=1.0, phased=False):
        """The stage's samples (process 0, once): the first min(64, n_eval) evaluation prompts, the same noise."""
        if ctx.main and not (out / stage / "grid.png").exists():
            z = generate_latents(net, grid_noise, sch, pred_type, calls, grid_tokens, guidance=w, phased=phased)
            save_grid(to_uint8(decode_latents(ae, z, scale)), out / stage / "grid.png")

    # -- teacher: the form's schedule and prediction type (in its checkpoint's config: another form's is refused), the
    # text tower trained from scratch with it, 10 % of prompts dropped
    schedule_name, pred = FORMS[args.form]
    schedule = get_schedule(schedule_name)
    unet_cfg = UNetConfig(in_channels=latents.shape[1], resolution=latents.shape[-1], channels=size.channels,
                          ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(latents.shape[-1], latents.shape[-1] // 2),
                          dropout=0.0, context_dim=size.text_dim)
    text_cfg = TextEncoderConfig(vocab_size=len(tokenizer.vocab), length=length, dim=size.text_dim)

    def teacher_batches(n, g):
        idx = torch.randint(len(latents), (n,), generator=g, device=g.device).to(device)
        z0 = latents[idx]                                                                # (B, c, 8, 8)
        return z0, torch.randn(z0.shape, generator=g, device=device), schedule.sample_t(n, g, device=device), \
            drop_prompts(tokens[idx], 0.1, g)

    torch.manual_seed(args.seed)
    with lap("teacher"):
        teacher = train(TextUNet(UNet(unet_cfg), TextEncoder(text_cfg)).to(device), schedule, pred, teacher_batches,
                        cfg(size.teacher_steps, 3e-4, size.minutes[1], weight_like=weight or None),
                        out / "teacher", desc="teacher",
                        require_done=not run("teacher"),
                        model_config={"unet": dataclasses.asdict(unet_cfg), "text": dataclasses.asdict(text_cfg),
                                      "vocab": tokenizer.vocab})
        grid("teacher", teacher, schedule, pred, 25, args.guidance)
    if last == "teacher":
        return say("teacher done")

    # -- pairs: prompts drawn from the captions, the teacher's guided ODE, K + 1 states per pair
    prompt_idx = torch.randint(len(caps), (size.n_pairs,), generator=torch.Generator().manual_seed(args.seed + 1))
    shape = tuple(latents.shape[1:])
    with lap("pairs"):
        if run("pairs"):
            generate_pairs(teacher, schedule, pred, out / "pairs", size.n_pairs, shape,
                           shard_size=max(16, size.n_pairs // 20), steps=size.pair_steps, phases=args.phases,
                           seed=args.seed, batch=2000, device=device, cond=tokens[prompt_idx.to(device)].cpu(),
                           null_cond=torch.zeros(length, dtype=torch.int64), guidance=args.guidance)
        pairs = load_pairs(out / "pairs", schedule, shape).to(device)
        if ctx.main and not (out / "pairs" / "grid.png").exists():   # the teacher's x̂0 of the first 64 pairs
            save_grid(to_uint8(decode_latents(ae, pairs.x_path[:64, -1], scale)), out / "pairs" / "grid.png")
    if last == "pairs":
        return say(f"pairs done: {len(pairs.eps)} in {out / 'pairs'}")

    # -- students: same pairs, same steps; RD and phased RD keep the teacher's form, RF is FM + velocity; phased RD
    # samples with one first-order step per phase (generate_latents(phased=True))
    fm = get_schedule("fm")
    students = {
        "RD": (lambda: copy.deepcopy(teacher), schedule, pred, pair_batches(pairs.endpoints(), schedule)),
        "RF": (lambda: flow_student(teacher), fm, "flow", flow_batches(pairs, fm)),
        f"phased RD (K={args.phases})": (lambda: copy.deepcopy(teacher), schedule, pred, pair_batches(pairs, schedule)),
    }
    trained, steps = {}, size.student_steps
    for (name, (init, sch, pred_type, batches)), stage in zip(students.items(), ("rd", "rf", "phased")):
        # RD may stop at its minute cap; RF and phased RD then take as many steps, same recipe (warm-up, intervals)
        student_cfg = dataclasses.replace(cfg(size.student_steps, 1e-4, size.minutes[2]), steps=steps,
                                          max_minutes=size.minutes[2] * args.time_scale if stage == "rd" else 0)
        with lap(stage):
            trained[name] = train(init().requires_grad_(True), sch, pred_type, batches, student_cfg, out / stage,
                                  desc=stage, require_done=not run(stage))
            phased = stage == "phased"
            grid(stage, trained[name], sch, pred_type, args.phases if phased else 1, phased=phased)
        if stage == "rd":
            steps = read_checkpoint(out / "rd" / "ckpt.pt")["step"]
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
        settings = EvalSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalSettings)})
        evaluate(settings, size.n_eval, size.clf_steps, out, device, images, attrs, tokenizer, length, ae, scale, models)
    print(lap.table())
    if preset == "tiny":
        print("preset tiny: a test-sized run (a few steps per stage) that shows the pipeline works end to end; its "
              "fidelities and losses say nothing about the models (use the cpu or gpu preset for those)")
    where = f"{torch.cuda.get_device_name() if device != 'cpu' else 'CPU'}, {ctx.world} process{'es' * (ctx.world > 1)}"
    atomic_write_text((out / "results.md").read_text() + f"\n{lap.table()} ({where})\n", out / "results.md")


def global_batch(args: Args, size: Preset, world: int) -> int:
    """Images per optimiser step over all processes: the batch (--batch or the preset's), split over the `world`
    processes, or with --batch_per_process that batch on each of them."""
    return size.batch * (world if args.batch_per_process else 1)


def with_defaults(old: dict, free: dict) -> dict:
    """A config.json written before a field of Args or Preset existed, read with the field at its default value (what
    that run used) — or, for a field that does not tie a run folder (`free`), as None; a flag that no longer exists
    is dropped."""
    args = {f.name: None if f.name in free else f.default for f in dataclasses.fields(Args)}
    size = {f.name: f.default for f in dataclasses.fields(Preset) if f.default is not dataclasses.MISSING}
    size = {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()}                # as JSON reads back
    kept = {k: v for k, v in old.get("args", {}).items() if k in args or v is not None}   # an untied old flag: gone
    return old | {"args": args | kept, "size": size | old.get("size", {})}


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, UnreadableFile, ConfigMismatch) as err:  # missing, damaged, another run's: say, exit 1
        sys.exit(f"train_sd.py: {err}")
