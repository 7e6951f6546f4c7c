"""Training images with the denoising loss: bf16 autocast, EMA, warm-up, clipping, atomic checkpoints, resume.

    cfg = TrainConfig(steps=20_000, batch=512)
    ema = train(net, schedule, "eps", batches, cfg, run_dir="runs/cifar/teacher")

`batches(n, generator)` returns (x0, ε, t, cond) on the training device: independent (x0, ε) for a teacher,
the teacher's pairs for a Rectified-Diffusion student — the same loop, as in rd.toy for 2D. Checkpoints are plain
dicts {model, ema, opt, step, minutes, config} written atomically every `ckpt_every` steps; a run restarted with the
same config resumes from the last one and loses at most the steps since. A run sent SIGTERM (`timeout -s TERM`,
SLURM, Kubernetes) loses nothing: it finishes its step (with several processes: steps up to the next log line, where
they agree to stop), writes a checkpoint and exits with status 143; the same call resumes it. (A SIGTERM sent to the
whole process group during the first torch.compile can kill the compiler's workers, and with them the compile.)
A run ends after `steps` steps or, with `max_minutes` > 0, once its training time summed over all restarts reaches
the budget: calling `train` again on a finished run only loads its EMA model (`require_done=True` refuses to train
at all — for a later stage that needs it).

Under torchrun (rd.dist) each of the W processes draws cfg.batch / W examples per step from its own stream and
DistributedDataParallel averages the gradients: the global batch of one process (and its step count, unless a
minute budget stops the run). Faster only where the per-GPU work outweighs the synchronisation (RESULTS.md has
multi-GPU measurements). Process 0 writes the checkpoints and logs; all of them resume from the same checkpoint; a
torch.compile failure stops a multi-process run (falling back on some processes only would desynchronise them).
"""
import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import dist
from .ema import EMA
from .io import ConfigMismatch, UnreadableFile, atomic_save, atomic_write_text, first_line, progress_off
from .predictions import LOSSES, check_pred_type, denoising_loss
from .schedules import Schedule


@dataclass
class TrainConfig:
    steps: int = 20_000          # optimiser steps
    batch: int = 512             # images per step
    lr: float = 2e-4             # Adam learning rate after warm-up
    warmup: int = 500            # linear warm-up steps
    ema_decay: float = 0.9995    # EMA of the weights (the sampled model)
    grad_clip: float = 1.0       # global gradient-norm clip
    amp: str = "bf16"            # "bf16" autocast, "fp16" autocast with a GradScaler, or "fp32"
    channels_last: bool = True   # NHWC activations (faster convolutions on tensor cores)
    compile: bool = False        # torch.compile the network (about a minute of compiling before the first step)
    log_every: int = 100         # log line interval (steps)
    ckpt_every: int = 1000       # checkpoint interval (steps)
    seed: int = 0                # seeds the batches
    max_minutes: float = 0.0     # > 0: training-time budget summed over restarts (checked every log_every steps)
    weight_like: str | None = None   # a prediction type: weigh the loss as its loss (rd.predictions.loss_weight)
    lr_decay: str = "none"       # after warm-up: "none", "linear" or "cosine" to 0 over the run (steps or minutes)
    loss: str = "mse"            # "mse": the prediction's squared error; "huber": pseudo-Huber on x̂0 (denoising_loss)
    huber_c: float = 1e-3        # c of the pseudo-Huber loss


LR_DECAYS = ("none", "linear", "cosine")


def lr_factor(cfg: TrainConfig, step: int, minutes: float) -> float:
    """lr/cfg.lr at `step` after `minutes` of training: linear warm-up, then the decay over the run's progress
    p = max(step/steps, minutes/max_minutes) — linear: 1 − p, cosine: ½(1 + cos πp)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    p = min(1.0, max(step / cfg.steps, minutes / cfg.max_minutes if cfg.max_minutes > 0 else 0.0))
    if cfg.lr_decay == "linear":
        return warm * (1.0 - p)
    if cfg.lr_decay == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * p))
    return warm


def _autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast (CPU or CUDA), fp16 autocast (CUDA), or nothing."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    enabled = dtype is not None and (device.type == "cuda" or dtype == torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=enabled)


def _denoising(model, schedule, pred_type, batch, cfg: TrainConfig):
    """The denoising loss of a (x0, ε, t, cond) batch, with cond passed to the network when it is not None."""
    x0, eps, t, cond = batch
    if cfg.channels_last:
        x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
    fn = model if cond is None else (lambda x, tt: model(x, tt, cond))
    return denoising_loss(fn, schedule, x0, eps, t, pred_type, weight_like=cfg.weight_like, loss=cfg.loss,
                          huber_c=cfg.huber_c)


class _Objective(torch.nn.Module):
    """The loss of one batch as a module's forward, so that DistributedDataParallel sees every forward pass."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch):
        return self.loss(self.model, batch)


class _Terminated:
    """While active, SIGTERM only sets `.flag`, which the loop reads after each step (main thread only: signal handlers
    cannot be installed elsewhere, and there SIGTERM keeps its default, fatal, action). A SIGTERM that came after the
    loop's last look is delivered again, to the restored handler, on the way out."""

    def __enter__(self):
        self.flag, self.installed = False, threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGTERM, self._set)
        return self

    def _set(self, signum, frame):
        self.flag = True

    def __exit__(self, exc_type, *exc):
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
            if self.flag and exc_type is None:
                signal.raise_signal(signal.SIGTERM)


_NEUTRAL = {"weight_like": None, "lr_decay": "none", "loss": "mse", "huber_c": 1e-3}   # settings equal to no setting at all (absent keys match them)


def _identity(config: dict) -> dict:
    """The config a checkpoint must match to be resumed: all of it but how long to train (steps, max_minutes) and
    whether the network is compiled, with the settings of _NEUTRAL left out where they have their neutral value."""
    train = {k: v for k, v in config.get("train", {}).items()
             if k not in ("steps", "max_minutes", "compile") and not (k in _NEUTRAL and v == _NEUTRAL[k])}
    return config | {"train": train}


def read_checkpoint(path) -> dict:
    """The dict of an rd.train checkpoint (model, ema, opt, step, minutes, config), on the CPU; a file that is not one
    (truncated, damaged) is an UnreadableFile that names it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                      # truncated zip, garbage, another pickle: torch raises many kinds
        raise UnreadableFile(f"{path} is not a readable checkpoint ({type(err).__name__}: {first_line(err)}); delete "
                             f"it to start this run over, or restore it from a copy") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise UnreadableFile(f"{path} is not an rd.train checkpoint (a dict with model, ema, opt, step, minutes, "
                             f"config); delete it to start this run over, or restore it from a copy")
    return ckpt


def checkpoint_steps(path) -> int:
    """The training steps an rd.train checkpoint holds (read_checkpoint's "step")."""
    return read_checkpoint(path)["step"]


def load_checkpoint(path, net, ema: EMA | None = None, opt=None, config: dict | None = None) -> dict:
    """Restore a checkpoint (read_checkpoint) into net (and ema, opt); refuse one written with another config.
    Returns the dict."""
    ckpt = read_checkpoint(path)
    if config is not None and _identity(ckpt.get("config", {})) != _identity(config):
        old, new = _identity(ckpt.get("config", {})), _identity(config)
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        raise ConfigMismatch(f"{path} was written with another config (checkpoint, now): {diff}; use another run "
                             f"folder or delete it to start over", diff)
    net.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    if opt is not None:
        opt.load_state_dict(ckpt["opt"])
    return ckpt


def train(net, schedule: Schedule, pred_type: str, batches, cfg: TrainConfig, run_dir, model_config: dict | None = None,
          desc: str = "train", require_done: bool | str = False, loss_fn=None):
    """Minimise the denoising loss for cfg.steps steps (or cfg.max_minutes); returns the EMA model. Resumes from run_dir/ckpt.pt.

    loss_fn(model, batch) → loss replaces the denoising loss for other networks (the autoencoder of train_sd.py);
    `batch` is then whatever batches(n, generator) returns, and schedule/pred_type may be None."""
    if cfg.amp not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"amp must be 'bf16', 'fp16' or 'fp32'; got {cfg.amp!r}")
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAYS)}; got {cfg.lr_decay!r}")
    if cfg.loss not in LOSSES or not cfg.huber_c > 0:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} with huber_c > 0; got {cfg.loss!r}, {cfg.huber_c!r}")
    if cfg.weight_like is not None:
        check_pred_type(cfg.weight_like)
        if loss_fn is not None:
            raise ValueError("weight_like weighs the denoising loss; it has no meaning with a loss_fn of your own")
    if cfg.loss != "mse" and loss_fn is not None:
        raise ValueError(f"loss={cfg.loss!r} changes the denoising loss; it has no meaning with a loss_fn of your own")
    run = Path(run_dir)
    device = next(net.parameters()).device
    rank, world = dist.rank(), dist.world()
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} must be divisible by the number of processes ({world})")
    config = {"train": asdict(cfg), "model": model_config or {}, "schedule": schedule and schedule.name,
              "pred_type": pred_type}
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train().requires_grad_(True)
    ema = EMA(net, cfg.ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=device.type == "cuda")   # one kernel on a GPU
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")
    step, spent = 0, 0.0                                    # steps done, training minutes spent (over all restarts)
    if (run / "ckpt.pt").exists():
        ckpt = load_checkpoint(run / "ckpt.pt", net, ema, opt, config)
        step, spent = ckpt["step"], ckpt.get("minutes", 0.0)
    finished = step >= cfg.steps or 0 < cfg.max_minutes <= spent
    if require_done and not finished:
        raise FileNotFoundError(f"{desc}: {run / 'ckpt.pt'} is {'missing' if step == 0 else f'unfinished (step {step})'}; "
                                f"run the '{require_done if isinstance(require_done, str) else desc}' stage first")
    if finished:
        print(f"{desc}: {run / 'ckpt.pt'} is finished (step {step}, {spent:.2f} min): loaded its EMA model")
        return ema.model.eval()
    if step > 0:
        print(f"{desc}: resumed from {run / 'ckpt.pt'} at step {step} ({spent:.2f} min trained)")
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(config, indent=1), run / "config.json")
    loss = loss_fn or (lambda model, batch: _denoising(model, schedule, pred_type, batch, cfg))

    def objective(compiled: bool):
        model = _Objective(torch.compile(net) if compiled else net, loss)
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
            if world > 1 else model
    compiled = cfg.compile
    model = objective(compiled)
    generator = torch.Generator(device=device)
    log = open(run / "log.txt", "a") if rank == 0 else None
    window, t_last = [], time.perf_counter()
    # a minute budget makes the step count at the end unknown (rd.cifar passes steps=10**9 for "no step budget"):
    # no total then, and the log lines count minutes instead
    bar = tqdm(total=cfg.steps if cfg.max_minutes <= 0 else None, initial=step, desc=desc, mininterval=2.0,
               disable=progress_off(rank != 0))
    saved = step                                            # the step of the checkpoint on disk (0: none)

    def diverged(mean, batch) -> FloatingPointError:
        """The error of a non-finite loss: the inputs' fault when the batch shows it, the checkpoint if there is one.
        Closes the bar and the log first (a bar left open redraws itself wherever stderr is when it is collected)."""
        bar.close()
        if log:
            log.close()
        items = batch if isinstance(batch, (tuple, list)) else (batch,)
        names = ("x0", "ε", "t", "cond") if loss_fn is None else [f"batch[{i}]" for i in range(len(items))]
        bad = [name for name, x in zip(names, items)
               if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all())]
        fix = f"lower lr (now {cfg.lr}) or use amp='fp32' to find out"
        if bad:
            cause = (f"the batch of step {step} holds non-finite {', '.join(bad)}: the data (or the pairs) that "
                     "`batches` returns are at fault, not the optimisation, and a lower lr will not help")
        elif len(window) > 1:
            cause = (f"the batch of step {step} is finite, but one of steps {step - len(window) + 1}–{step - 1} may "
                     f"not have been (the loss is checked every log_every = {cfg.log_every} steps), or training "
                     f"diverged: check the data, then {fix}")
        else:
            cause = f"the batch of step {step} is finite, so training diverged: {fix}"
        where = (f"{run / 'ckpt.pt'} (step {saved}) is the last checkpoint, written while the loss was finite: a rerun "
                 f"resumes from it" if saved > 0 and (run / "ckpt.pt").exists() else
                 "No checkpoint was written yet: a rerun starts from step 0")
        return FloatingPointError(f"{desc}: loss is {mean} at step {step}; {cause}. {where}")
    t_start, first, minutes = t_last, step, spent
    with _Terminated() as terminated:
        while step < cfg.steps:
            # every step's randomness (batch, noise, times, dropout) comes from (seed, step, rank): resuming replays it
            seed = dist.stream_seed(cfg.seed, step) * world + rank
            generator.manual_seed(seed)
            torch.manual_seed(seed)
            batch = batches(cfg.batch // world, generator)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, spent + (time.perf_counter() - t_start) / 60)
            opt.zero_grad(set_to_none=True)
            try:
                with _autocast(cfg, device):
                    value = model(batch)
                scaler.scale(value).backward()
            except Exception as err:      # torch.compile fails at its first call: warn, redo the same step eagerly
                if not compiled or step > first or world > 1:
                    raise
                warnings.warn(f"{desc}: torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
                              "training eagerly")
                compiled = False
                model = objective(compiled)
                continue
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(net)
            step += 1
            bar.update(1)
            window.append(value.detach())
            out_of_time, sigterm = False, world == 1 and terminated.flag
            if step % cfg.log_every == 0 or step == cfg.steps:
                # one device sync per log line; with several processes their mean loss, minutes and SIGTERM flags,
                # so that all of them stop (NaN, budget, SIGTERM) at the same step
                state = torch.tensor([(time.perf_counter() - t_start) / 60, terminated.flag], device=device)
                mean, elapsed, flags = dist.mean(torch.cat([torch.stack(window).mean().float()[None], state])).tolist()
                minutes, sigterm = spent + elapsed, flags > 0
                out_of_time = cfg.max_minutes > 0 and step % cfg.log_every == 0 and minutes >= cfg.max_minutes
                if not math.isfinite(mean):
                    raise diverged(mean, batch)
                dt = (time.perf_counter() - t_last) / len(window)
                budget = f"/{cfg.steps}" if cfg.max_minutes <= 0 else f" ({minutes:.2f}/{cfg.max_minutes:g} min)"
                line = (f"step {step}{budget} | loss {mean:.4f} | {1000 * dt:.1f} ms/step | "
                        f"{cfg.batch / dt:.0f} img/s")
                if log:
                    print(line, file=log, flush=True)
                bar.set_postfix_str(line.split(" | ", 1)[1]
                                    + (f" | {minutes:.2f}/{cfg.max_minutes:g} min" if cfg.max_minutes > 0 else ""))
                window, t_last = [], time.perf_counter()
            if (step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time or sigterm) and rank == 0:
                finite = True
                if step % cfg.log_every:                                       # minutes are exact at log lines only
                    minutes = spent + (time.perf_counter() - t_start) / 60
                    finite = not window or math.isfinite(mean := torch.stack(window).mean().item())
                    if not finite and world == 1:    # never a checkpoint of weights after a non-finite loss
                        raise diverged(mean, batch)  # (several processes: no checkpoint; all raise at the log line)
                if finite:
                    atomic_save({"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                                 "step": step, "minutes": minutes, "config": config}, run / "ckpt.pt")
                    saved = step
            if sigterm:
                bar.close()
                if log:
                    print(f"{desc}: stopped by SIGTERM at step {step}", file=log, flush=True)
                    log.close()
                    print(f"{desc}: stopped by SIGTERM at step {step} ({minutes:.2f} min trained); {run / 'ckpt.pt'} "
                          f"holds it: run the same command again to resume", file=sys.stderr, flush=True)
                raise SystemExit(128 + signal.SIGTERM)
            if out_of_time:
                if log:
                    print(f"{desc}: stopped at step {step} after {minutes:.2f} min (max_minutes {cfg.max_minutes})",
                          file=log, flush=True)
                break
    bar.close()
    if log:
        log.close()
    dist.barrier()                                          # the last checkpoint is on disk for every process
    return ema.model.eval()
