"""Files that are never half-written: every checkpoint and pair shard in rd goes through `atomic_save`; clear errors
for files that are missing, damaged or another run's, and the hashes that tell (`sha256` of a file, `fingerprint` of
a network's weights)."""
import hashlib
import json
import os
from pathlib import Path

import torch


def atomic_write(path, write):
    """write(f) into a temporary file in the same folder, fsync, then rename: a crash leaves the old file or none
    (and a failed write removes its temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
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


def _remove_stale_temporaries(path: Path):
    """Delete .<name>.tmp<pid> files beside `path` left by processes that no longer run (killed during a write)."""
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name[len(f".{path.name}.tmp"):]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (POSIX; elsewhere assume it does, and delete nothing)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                     # someone else's process, or no way to tell
        return True
    return True


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


class UnreadableFile(ValueError):
    """A file that exists but cannot be read as what it should be (truncated, damaged, another format); the message
    names the file and what to do. The command lines (rd.cifar, train_sd.py) print it without a traceback."""


class ConfigMismatch(ValueError):
    """A checkpoint written by a run of another configuration, found where this run would resume; the message names
    the file and the differences, `diff` (where known) holds them as {field: (old, new)}. The command lines print it
    without a traceback."""

    def __init__(self, message: str, diff: dict | None = None):
        super().__init__(message)
        self.diff = diff or {}


def config_changes(old: dict, new: dict) -> str:
    """What differs between two configs of sections of fields (a run folder's config.json and this run's), e.g.
    "args.form: 'vp-sd-eps' → 'vp-sd-v', size.batch: not set → 64"."""
    changes = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += [f"{section}.{k}: {a[k]!r} → {b[k]!r}" if k in a and k in b else
                        f"{section}.{k}: {'not set → ' + repr(b[k]) if k in b else repr(a[k]) + ' → not set'}"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) or (k in a) != (k in b)]
        elif a != b:
            changes.append(f"{section}: {a!r} → {b!r}")
    return ", ".join(changes)


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception's first line (its first sentence when longer than `limit` characters, as torch's are), at most
    `limit` characters: enough to recognise it inside another message."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text if len(text) <= limit else text.split(". ")[0]
    return text if len(text) <= limit else text[:limit] + "…"


def read_json(path, fix: str):
    """json.loads of a file; one that is not valid JSON (truncated, edited by hand) is an UnreadableFile naming it,
    with `fix`, what to do about it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnreadableFile(f"{path} is not valid JSON ({first_line(err)}): a damaged or truncated file; {fix}") \
            from err


def not_a_folder(path) -> Path | None:
    """The first of `path` and its parents that exists but is not a folder (so `path` cannot be made a folder), or
    None: checked before any work, so that `--out=<a file>` is refused at once rather than at the first write."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def progress_off(off: bool = False) -> bool:
    """`disable` for a tqdm bar: True when `off`, or when the environment variable TQDM_DISABLE is set to anything but
    '', 0, false, no or off. (tqdm reads TQDM_DISABLE only where no `disable` is passed; rd passes one.)"""
    return off or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off")


def sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (pair shards are checked against their manifest with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(net) -> str | None:
    """SHA-256 of a module's weights (None for a plain function): pairs are tied to the teacher that made them."""
    if not hasattr(net, "state_dict"):
        return None
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
