"""Files that are never half-written: every checkpoint and pair shard in rd goes through `atomic_save`; `Laps`, a
pipeline's minutes per stage kept in such a file."""
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def atomic_write(path, write):
    """write(f) into a temporary file in the same folder, fsync, then rename: a crash leaves the old file or none
    (and a failed write removes its temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj, path):
    """torch.save, atomically (checkpoints, pair shards)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path):
    """A text file, atomically (manifests, configs)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _fsync_dir(folder: Path):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (pair shards are checked against their manifest with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        self.minutes = json.loads(self.path.read_text()) if self.path.exists() else {}

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
