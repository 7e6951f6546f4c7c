"""What the two pipelines (`python -m rd.cifar`, `train_sd.py`) share about their stages: which to run
(`parse_stages`), the minutes each took over all invocations (`Laps`), and equal training steps for the students
that are compared (`StepMatch`).

    stages = parse_stages("teacher,pairs", STAGES)          # in STAGES' order; None for an unknown name
    laps = Laps(run / "minutes.json")
    match = StepMatch(steps=1000, max_minutes=0.0, steps_of=checkpoint_steps)  # rd.train's
    for name in ("rd", "rf"):
        with laps(name):
            student = train(..., TrainConfig(**match.budget(), ...))
        if name == "rd":              # the first: its steps are the budget of the rest; a later one of more is refused
            match.first_took(run / "rd/ckpt.pt", [run / "rf/ckpt.pt"])
"""
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch

from .io import ConfigMismatch, atomic_write_text, read_json


def parse_stages(text: str, known: tuple) -> list[str] | None:
    """A --stages value: 'all' → every stage of `known`; a comma list → those stages in `known`'s order (a pipeline
    runs them in that order and stops after the last); None when the list is empty or names an unknown stage."""
    names = list(known) if text.strip() == "all" else [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(n not in known for n in names):
        return None
    return [s for s in known if s in names]


class Laps:
    """Wall-clock minutes per stage of a pipeline, summed over its invocations, kept in a JSON file (GPU-minutes on one
    GPU; the device is synchronised at both ends of a stage).

        laps = Laps(run / "minutes.json")
        with laps("teacher"):
            teacher = train(...)

    A block's time is added when it ends, also when it ends by an exception, e.g. the SystemExit with which rd.train
    answers SIGTERM (after saving its checkpoint), so a run split over several invocations reports its whole cost; a
    stage that is only loaded from its checkpoint adds its loading time. (SIGTERM outside a training loop kills the
    process at once: that stage's minutes are lost.) `write=False` (processes other than 0) only counts."""

    def __init__(self, path, write: bool = True):
        self.path, self.write = Path(path), write
        self.minutes = read_json(self.path, "delete it to count the minutes per stage from 0 again, or restore "
                                 "it from a copy") if self.path.exists() else {}

    @contextmanager
    def __call__(self, stage: str):
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.add(stage, (time.perf_counter() - start) / 60)

    def add(self, stage: str, minutes: float):
        """Add minutes timed elsewhere to `stage`."""
        self.minutes[stage] = self.minutes.get(stage, 0.0) + minutes
        if self.write:
            atomic_write_text(json.dumps(self.minutes, indent=1), self.path)

    def table(self) -> str:
        return "minutes per stage (summed over runs): " + ", ".join(f"{k} {v:.2f}" for k, v in self.minutes.items()) \
            + f"; total {sum(self.minutes.values()):.2f}"


def synchronize():
    """Wait for queued GPU work, so that it is timed where it was queued (a GPU in an error state is not waited for)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass


class StepMatch:
    """Equal steps for every compared student: the first trains to its budget (steps, and a minute cap that may
    stop it first); every later one takes the step count the first reached and no minute cap."""

    def __init__(self, steps: int, max_minutes: float, steps_of: Callable[[Path], int]):
        """steps_of(checkpoint path) → its training steps (the pipelines pass rd.train.checkpoint_steps)."""
        self.steps, self.max_minutes, self.steps_of = steps, max_minutes, steps_of
        self.first_steps = None                                     # the first's, once trained

    def budget(self) -> dict:
        """The next student's `steps` and `max_minutes` (rd.train.TrainConfig's fields)."""
        if self.first_steps is None:
            return dict(steps=self.steps, max_minutes=self.max_minutes)
        return dict(steps=self.first_steps, max_minutes=0.0)

    def first_took(self, first: Path, later: Iterable[Path]):
        """The first student's checkpoint `first`: its steps are the budget of every later one. later: the
        checkpoints the later students resume from; one already on disk (an earlier run's) with more steps cannot be
        compared, and a ConfigMismatch names it and the fix."""
        self.first_steps = steps = self.steps_of(Path(first))
        for path in map(Path, later):
            if path.exists() and (n := self.steps_of(path)) > steps:
                raise ConfigMismatch(f"{path} holds a student of {n} steps, {Path(first).parent.name} took {steps}: "
                                     f"the comparison needs equal steps; delete {path.parent} and run the students "
                                     f"again")
