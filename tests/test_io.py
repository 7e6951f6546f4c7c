"""rd.io: a failed write leaves the old file, temporaries of dead writers are removed, damaged files are named."""
import os

import pytest

from rd.io import atomic_write, atomic_write_text, config_changes


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text("old", path)

    def crash(f):
        f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_write_removes_the_temporaries_of_dead_writers_only(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)                                   # a process that has ended
    stale = tmp_path / f".ckpt.pt.tmp{dead_pid}"
    alive = tmp_path / f".ckpt.pt.tmp{os.getppid()}"              # a writer that still runs
    other = tmp_path / f".other.pt.tmp{dead_pid}"                 # another file's temporary
    for f in (stale, alive, other):
        f.write_bytes(b"half a checkpoint")
    atomic_write_text("done", tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").read_text() == "done"
    assert not stale.exists() and alive.exists() and other.exists()


def test_damaged_json_folder_checks_and_tqdm_disable(tmp_path, monkeypatch):
    """A truncated JSON file (config.json) names itself and the fix; a file where a folder
    should be is found before any work; TQDM_DISABLE turns rd's bars off, although they pass `disable`."""
    from rd.io import not_a_folder, progress_off, read_json
    (tmp_path / "config.json").write_text('{"args": {')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .*; start over"):   # a ValueError too
        read_json(tmp_path / "config.json", "start over")
    (tmp_path / "config.json").write_text('{"args": {}}')
    assert read_json(tmp_path / "config.json", "start over") == {"args": {}}
    (tmp_path / "file").write_text("")
    assert not_a_folder(tmp_path / "file") == not_a_folder(tmp_path / "file" / "sub") == tmp_path / "file"
    assert not_a_folder(tmp_path / "new" / "sub") is None and not_a_folder(tmp_path) is None
    for value, off in (("1", True), ("true", True), ("", False), ("0", False), ("false", False)):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert progress_off() is off and progress_off(True) is True
    monkeypatch.delenv("TQDM_DISABLE")
    assert progress_off() is False


def test_config_changes_names_each_changed_field_by_section():
    old = {"args": {"form": "vp-sd-eps", "seed": 0, "gone": 1}, "preset": "cpu", "size": {"batch": 64}}
    new = {"args": {"form": "vp-sd-v", "seed": 0}, "preset": "gpu", "size": {"batch": 64, "n_pairs": 10}}
    assert config_changes(old, new) == ("args.form: 'vp-sd-eps' → 'vp-sd-v', args.gone: 1 → not set, "
                                        "preset: 'cpu' → 'gpu', size.n_pairs: not set → 10")
    assert config_changes(new, new) == ""
