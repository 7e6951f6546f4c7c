"""Shared test fixtures that are not tests: a float64 batch of (x0, ε, t) on a schedule; a tutorial's smoke-run
environment; a pause of the assignment-reach tracer."""
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def noisy_batch(schedule, n=257, d=3, seed=0):
    """x0, ε ~ N(0, I) in d dimensions, t uniform in the schedule's range: (x0, ε, schedule(t), x_t = α x0 + σ ε)."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    c = schedule(t)
    return x0, eps, c, c.alpha[:, None] * x0 + c.sigma[:, None] * eps


def record_late_t(monkeypatch) -> list:
    """rd.rectify.late_t replaced by t_max for every draw, recording each drawing schedule's name: who trains on it."""
    import rd.rectify
    drawn = []
    monkeypatch.setattr(rd.rectify, "late_t", lambda sch, n, g, device=None: drawn.append(sch.name) or
                        torch.full((n,), sch.t_max, dtype=torch.float64, device=device))
    return drawn


def smoke_env(out, **extra) -> dict:
    """The environment of a tutorial's smoke run (RD_SMOKE=1) writing to `out`, quiet, without a display, importing
    this clone's rd whichever clone is installed; `extra` adds or overrides variables."""
    return dict(os.environ) | dict(RD_SMOKE="1", RD_OUT=str(out), TQDM_DISABLE="1", MPLBACKEND="Agg",
                                   PYTHONPATH=str(ROOT)) | extra


@contextmanager
def untraced():
    """Pause this thread's trace function (tests/conftest.py's assignment-reach tracer) inside the block: for a
    torch.compile'd call, whose Python is the compiler's, run millions of times, not the tested code's. What the block
    reaches is not measured, so keep the eager calls that a test compares with outside it."""
    tracer = sys.gettrace()
    sys.settrace(None)
    try:
        yield
    finally:
        sys.settrace(tracer)


@contextmanager
def tf32_kept():
    """TF32 matmul and cuDNN settings restored on exit: rd.cifar and train_sd.py turn them on for their process, and a
    run inside the test process must not leave them on for later tests. (Saved and set by hand: both are properties
    of their modules' classes, which pytest's monkeypatch cannot always restore.)"""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def train_sd_run(*flags, env=None):
    """python train_sd.py flags, in a subprocess from the repo root: the CompletedProcess (stdout, stderr as text)."""
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train_sd.py"), *flags], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def train_sd_refused(capsys, *flags) -> tuple:
    """train_sd.main(flags) in this process, expected to stop: (exit status or message, stderr)."""
    import train_sd
    with pytest.raises(SystemExit) as stop:
        train_sd.main(list(flags))
    return stop.value.code, capsys.readouterr().err
