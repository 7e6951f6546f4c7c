"""Files that are never half-written: every checkpoint and pair shard in rd goes through `atomic_save`."""
import hashlib
import os
from pathlib import Path

import torch


def atomic_write(path, write):
    """write(f) into a temporary file in the same folder, fsync, then rename: a crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
