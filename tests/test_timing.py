"""rd.timing: Laps sums a pipeline's minutes over invocations, interrupted ones too."""
import json

import pytest

from rd.timing import Laps


def test_laps_sum_over_invocations_and_count_a_stage_that_ends_by_an_exception(tmp_path, monkeypatch):
    clock = iter([0.0, 60.0, 100.0, 130.0, 200.0, 320.0])             # perf_counter at each stage's start and end
    monkeypatch.setattr("rd.timing.time.perf_counter", lambda: next(clock))
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
    monkeypatch.setattr("rd.timing.time.perf_counter", iter([0.0, 6.0]).__next__)
    with quiet("x"):
        pass
    assert quiet.minutes == {"x": 0.1} and not (tmp_path / "other.json").exists()


def test_a_damaged_minutes_file_names_itself_and_the_fix(tmp_path):
    from rd.io import UnreadableFile
    path = tmp_path / "minutes.json"
    path.write_text('{"teacher": 1.')
    with pytest.raises(UnreadableFile, match=r"minutes.json is not valid JSON .*delete it to count the minutes"):
        Laps(path)
