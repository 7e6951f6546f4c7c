"""rd.io: a failed write leaves the old file; Laps sums a pipeline's minutes over invocations, interrupted ones too."""
import json

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
