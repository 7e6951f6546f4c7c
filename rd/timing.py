"""Timing: `Laps`, a pipeline's minutes per stage kept in a file that is never half-written; `synchronize`, so
that queued GPU work is timed where it was queued; `timeit` and `graph_timeit`, medians of short calls."""
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .io import atomic_write_text, read_json


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


def timeit(fn, iters: int, warmup: int) -> float:
    """Median seconds of one fn() over `iters` calls after `warmup` calls (CUDA events when a GPU is present)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def graph_timeit(fn, iters: int, warmup: int) -> float:
    """Median seconds of one replay of fn captured in a CUDA graph: the GPU's time alone, without the host's
    (Python, dispatcher, launch) overhead, which dominates small ops timed one call at a time."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):                          # warm-up on a side stream, as capture requires
        for _ in range(max(warmup, 2)):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timeit(graph.replay, iters, warmup)
