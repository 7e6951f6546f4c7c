"""rd.stages: which stages a pipeline runs, its minutes per stage over invocations (interrupted ones too), equal
steps for the compared students."""
import json

import pytest

from rd.io import ConfigMismatch
from rd.stages import Laps, StepMatch, parse_stages


def test_stages_are_all_or_a_comma_list_run_in_the_pipelines_order():
    known = ("ae", "teacher", "pairs")
    assert parse_stages("all", known) == ["ae", "teacher", "pairs"]
    assert parse_stages("pairs, ae", known) == ["ae", "pairs"] and parse_stages("teacher", known) == ["teacher"]
    for bad in ("", ",", "ae,bogus", "All"):
        assert parse_stages(bad, known) is None, bad


def test_laps_sum_over_invocations_and_count_a_stage_that_ends_by_an_exception(tmp_path, monkeypatch):
    clock = iter([0.0, 60.0, 100.0, 130.0, 200.0, 320.0])             # perf_counter at each stage's start and end
    monkeypatch.setattr("rd.stages.time.perf_counter", lambda: next(clock))
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
    monkeypatch.setattr("rd.stages.time.perf_counter", iter([0.0, 6.0]).__next__)
    with quiet("x"):
        pass
    assert quiet.minutes == {"x": 0.1} and not (tmp_path / "other.json").exists()


def test_a_damaged_minutes_file_names_itself_and_the_fix(tmp_path):
    from rd.io import UnreadableFile
    path = tmp_path / "minutes.json"
    path.write_text('{"teacher": 1.')
    with pytest.raises(UnreadableFile, match=r"minutes.json is not valid JSON .*delete it to count the minutes"):
        Laps(path)


def on_disk(tmp_path, steps: dict) -> dict:
    """{path: steps} of fake checkpoints, each file made; the dict's lookup stands in for rd.train.checkpoint_steps."""
    for name in steps:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return {tmp_path / name: n for name, n in steps.items()}


def test_step_match_gives_the_first_students_steps_to_the_rest(tmp_path):
    steps = on_disk(tmp_path, {"rd/ckpt.pt": 640, "rf/ckpt.pt": 300, "rd2/ckpt.pt": 640})
    match = StepMatch(steps=1000, max_minutes=2.5, steps_of=steps.__getitem__)
    assert match.budget() == {"steps": 1000, "max_minutes": 2.5}          # the first: the budget, its minute cap
    match.first_took(tmp_path / "rd/ckpt.pt", [tmp_path / "rf/ckpt.pt", tmp_path / "rd2/ckpt.pt",
                                               tmp_path / "rd4/ckpt.pt"])   # rd4: not trained yet, not read
    assert match.budget() == {"steps": 640, "max_minutes": 0.0}           # the rest: its steps, no minute cap
    assert StepMatch(steps=50, max_minutes=0.0, steps_of=steps.__getitem__).budget() == {"steps": 50,
                                                                                        "max_minutes": 0.0}


def test_step_match_refuses_a_later_student_of_more_steps_and_names_it(tmp_path):
    steps = on_disk(tmp_path, {"rd/ckpt.pt": 640, "rf/ckpt.pt": 700})
    with pytest.raises(ConfigMismatch, match=r"rf/ckpt.pt holds a student of 700 steps, rd took 640: the comparison "
                                             r"needs equal steps; delete .*rf and run the students again"):
        StepMatch(steps=1000, max_minutes=0.0, steps_of=steps.__getitem__).first_took(
            tmp_path / "rd/ckpt.pt", [tmp_path / "rf/ckpt.pt"])
