"""rd.io: a failed write leaves the old file; Laps sums a pipeline's minutes over invocations, interrupted ones too."""
import json
import os

import pytest

from rd.io import Laps, atomic_write, atomic_write_text


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


def test_laps_sum_over_invocations_and_count_a_stage_that_ends_by_an_exception(tmp_path, monkeypatch):
    clock = iter([0.0, 60.0, 100.0, 130.0, 200.0, 320.0])             # perf_counter at each stage's start and end
    monkeypatch.setattr("rd.io.time.perf_counter", lambda: next(clock))
    laps = Laps(tmp_path / "minutes.json")
    with laps("teacher"):
        pass
    with pytest.raises(SystemExit), laps("pairs"):                     # e.g. rd.train stopped by SIGTERM
        raise SystemExit("stopped by SIGTERM")
    again = Laps(tmp_path / "minutes.json")                            # the next invocation goes on
    with again("pairs"):
        pass
    assert json.loads((tmp_path / "minutes.json").read_text()) == {"teacher": 1.0, "pairs": 0.5 + 2.0}
    assert again.table() == "minutes per stage (summed over runs): teacher 1.00, pairs 2.50; total 3.50"
    quiet = Laps(tmp_path / "other.json", write=False)                 # processes other than 0 only count
    monkeypatch.setattr("rd.io.time.perf_counter", iter([0.0, 6.0]).__next__)
    with quiet("x"):
        pass
    assert quiet.minutes == {"x": 0.1} and not (tmp_path / "other.json").exists()


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
    """A truncated JSON file (minutes.json, config.json) names itself and the fix; a file where a folder
    should be is found before any work; TQDM_DISABLE turns rd's bars off, although they pass `disable`."""
    from rd.io import UnreadableFile, not_a_folder, progress_off, read_json
    path = tmp_path / "minutes.json"
    path.write_text('{"teacher": 1.')
    with pytest.raises(UnreadableFile, match=r"minutes.json is not valid JSON .*delete it to count the minutes"):
        Laps(path)
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
