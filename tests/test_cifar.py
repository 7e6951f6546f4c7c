"""rd.cifar, the CIFAR-10 pipeline, at smoke size (random images, tiny UNet), run by tutorial 03: every stage, one stage
at a time, resume, another students' seed. Its flags and recipes, refused or chosen before any work: test_cifar_flags.py."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import record_late_t, smoke_env

from rd.cifar import main, older_default

pytestmark = [pytest.mark.e2e,                 # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)
              pytest.mark.usefixtures("tf32_as_it_was")]

ROOT = Path(__file__).resolve().parents[1]
LAST = "out.weight"   # the UNet's last layer


def run(out, *flags):
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rd.cifar", "--preset=smoke", f"--out={out}", *flags], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


class Run:
    """What a run in this process left: exit status (0, or the SystemExit's message), stdout, stderr."""

    def __init__(self, capsys, out, *flags):
        try:
            main(["--preset=smoke", f"--out={out}", *flags])
            self.returncode = 0
        except SystemExit as stop:
            self.returncode = stop.code or 0
        said = capsys.readouterr()
        self.stdout = said.out
        self.stderr = said.err + (self.returncode if isinstance(self.returncode, str) else "")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Tutorial 03's smoke run: its section 1 (the forms' arithmetic and figure), then rd.cifar at --preset=smoke."""
    out = tmp_path_factory.mktemp("cifar")
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "03_cifar10.py")], env=smoke_env(out),
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_tutorial_03_explains_the_forms_and_runs_the_pipeline(finished):
    out, stdout = finished
    assert (out / "03_form_weights.png").stat().st_size > 10_000
    for row in ("| vp-sd-eps |", "| edm |", "| rd |", "| RD ÷ RF at 1 call |"):
        assert row in stdout, row


def test_whole_pipeline_leaves_tables_grids_and_logs(finished):
    out, stdout = finished
    table = (out / "results.md").read_text()
    for row in ("| teacher |", "| rd |", "| rf |", "| rd2 |", "| rd4 |", "| RD ÷ RF at 1 call |",
                "| stage (summed over invocations) |", "pair generation", "teacher training",
                "| the students' data | FID |",
                "| the pairs' x̂0 (the first 8: the teacher's dpm++2m, 4 steps through 4 phases, from their own noise) "
                "| — |",
                f"teacher sampling, 4 calls, batch 8, {'bf16' if torch.cuda.is_available() else 'fp32'}, steady state"):
        assert row in table and row in stdout, row
    # the smoke run's printout claims nothing it did not do (no FID, random images, a CPU)
    assert table.startswith("FID skipped (--inception=''), random images; tiny UNet") and "FID-0" not in stdout
    assert "GPU-minutes" not in stdout and "JPEG" not in stdout
    assert (out / "samples.png").stat().st_size > 10_000
    students = ("rd", "rf", "rd2", "rd4")
    for stage in ("teacher",) + students:
        assert "img/s" in (out / stage / "log.txt").read_text()
    steps = {s: torch.load(out / s / "ckpt.pt", weights_only=True)["step"] for s in students}
    assert set(steps.values()) == {5}, f"every student takes the first one's step count: {steps}"
    manifest = json.loads((out / "pairs" / "manifest.json").read_text())
    assert manifest["config"]["clean"] and manifest["config"]["phases"] == 4
    minutes = json.loads((out / "minutes.json").read_text())
    assert list(minutes) == ["data", "teacher", "pairs", "pairs (load)", *students, "eval"]
    config = json.loads((out / "config.json").read_text())
    assert (config["form"], config["teacher_weight"], config["lr"]) == ("vp-sd-v", "eps", 5e-4)
    teacher = json.loads((out / "teacher" / "config.json").read_text())["train"]
    assert teacher["weight_like"] == "eps" and teacher["warmup"] == 3
    warmups = {s: json.loads((out / s / "config.json").read_text())["train"]["warmup"] for s in students}
    assert set(warmups.values()) == {1}, f"a student warms up for at most a fifth of its 5 steps: {warmups}"


def test_rerun_loads_finished_stages_and_another_seed_writes_beside_them(finished, capsys):
    out, _ = finished
    logs = {s: (out / s / "log.txt").read_text() for s in ("teacher", "rd", "rf", "rd2", "rd4")}
    proc = Run(capsys, out, "--stages=eval")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("is finished") == 5 and "pairs/s" in proc.stdout
    assert logs == {s: (out / s / "log.txt").read_text() for s in logs}, "nothing was retrained"
    proc = Run(capsys, out, "--stages=students,eval", "--student_seed=1", "--students=rd,rf")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "rd-s1" / "ckpt.pt").exists() and (out / "results-s1.md").exists()
    assert not torch.equal(torch.load(out / "rd-s1" / "ckpt.pt", weights_only=True)["model"][LAST],
                           torch.load(out / "rd" / "ckpt.pt", weights_only=True)["model"][LAST])
    assert logs["rd"] == (out / "rd" / "log.txt").read_text()
    assert json.loads((out / "rd" / "config.json").read_text())["train"]["loss"] == "mse"
    proc = Run(capsys, out, "--stages=students,eval", "--student_loss=huber", "--student_t=uniform", "--students=rd")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "rd-huber-tuniform" / "config.json").read_text())["train"]
    assert config["loss"] == "huber" and (out / "results-huber-tuniform.md").exists()
    # another sampler is evaluated beside the default's results, on the same students, without retraining
    table = (out / "results.md").read_text()
    proc = Run(capsys, out, "--stages=eval", "--students=rd,rd2", "--grid=edm", "--sampler=dpm++3m", "--teacher_calls=2,4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    other = (out / "results-edm-dpmpp3m.md").read_text()
    assert "dpm++3m (dpm++2m at 2 calls) on the edm grid" in other and "| rd2 |" in other and "| rf |" not in other
    assert table == (out / "results.md").read_text() and logs["rd"] == (out / "rd" / "log.txt").read_text()
    # students are compared at equal steps: a later student of more steps than the first took is refused by name
    shutil.rmtree(out / "rd-s1")
    proc = Run(capsys, out, "--stages=students", "--student_seed=1", "--students=rd,rf", "--student_steps=3")
    assert proc.returncode != 0 and "rf-s1/ckpt.pt holds a student of 5 steps, rd-s1 took 3: the comparison needs " \
        "equal steps" in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_late_times_by_default_reach_every_student_towards_where_it_is_queried_and_an_older_default_s_folder_is_refused(
        tmp_path, capsys, monkeypatch):
    import rd.rectify
    drawn, starts, phase_start_t = record_late_t(monkeypatch), [], rd.rectify.phase_start_t
    monkeypatch.setattr(rd.rectify, "phase_start_t", lambda b, n, g, device=None:       # rd2's draws, by boundaries
                        starts.append(len(b)) or phase_start_t(b, n, g, device))
    main(["--preset=smoke", f"--out={tmp_path}", "--students=rd,rf,rd2"])
    assert set(drawn) == {"vp-sd", "fm"} and drawn.count("vp-sd") == drawn.count("fm") > 0, drawn   # rd, rf: t_max
    assert starts and set(starts) == {3}, starts                       # rd2: towards the starts of its two phases
    assert (tmp_path / "rd" / "ckpt.pt").exists() and (tmp_path / "results.md").exists()
    models = {s: json.loads((tmp_path / s / "config.json").read_text())["model"] for s in ("rd", "rf", "rd2")}
    assert models == {s: {"student_t": "late"} for s in ("rd", "rf", "rd2")}, models
    capsys.readouterr()
    drawn.clear(), starts.clear()
    proc = Run(capsys, tmp_path, "--stages=students", "--students=rd,rd2", "--student_t=schedule")
    assert proc.returncode == 0 and drawn == starts == [], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "rd2-tschedule" / "config.json").read_text())["model"] == {}
    proc = Run(capsys, tmp_path, "--stages=students", "--students=rd", "--student_loss=huber")
    assert proc.returncode == 0 and (tmp_path / "rd-huber" / "ckpt.pt").exists(), proc.stderr[-3000:]
    for name, older in (("rd", "rd-huber"), ("rd2", "rd2-tschedule")):   # older defaults' students where today's belong
        shutil.rmtree(tmp_path / name)
        (tmp_path / older).rename(tmp_path / name)
    huber, late = ("'loss': 'huber'", "rd-huber, … and pass --student_loss=huber"), \
        ("'student_t': 'late'", "rd-tschedule, … and pass --student_t=schedule")
    for stages, name, (change, hint) in (("students", "rd", huber), ("eval", "rd", huber), ("students", "rd2", late)):
        proc = Run(capsys, tmp_path, f"--stages={stages}", f"--students={name}")
        assert proc.returncode != 0 and f"{name}/ckpt.pt was written with another config" in proc.stderr \
            and change in proc.stderr and f"rename rd, rf, rd2, rd4 to {hint})" in proc.stderr, \
            proc.stdout[-3000:] + proc.stderr[-3000:]


def test_another_handover_trains_only_the_phased_students_beside_the_default_s(finished, tmp_path, capsys,
                                                                              monkeypatch):
    """--handover=0.6: rd2 and rd4 train on it, in rd2-h0.6 and rd4-h0.6 (recorded in their checkpoints); rd and rf
    are the default's, loaded, not retrained; the tables go to results-h0.6.md (without a phased student, to the
    default's). A folder of another handover under that name is refused."""
    import rd.cifar
    shutil.copytree(finished[0], tmp_path / "run")
    out, handovers, real = tmp_path / "run", [], rd.cifar.pair_batches
    monkeypatch.setattr(rd.cifar, "pair_batches", lambda pairs, sch, handover, sample_t=None:
                        handovers.append((len(pairs.boundaries) - 1, handover)) or real(pairs, sch, handover, sample_t))
    logs = {s: (out / s / "log.txt").read_text() for s in ("rd", "rf", "rd2", "rd4")}
    proc = Run(capsys, out, "--stages=students,eval", "--handover=0.6")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(handovers) == [(1, 0.6), (2, 0.6), (4, 0.6)], handovers      # rd's batches too: one phase, no effect
    assert logs == {s: (out / s / "log.txt").read_text() for s in logs}, "the default's students are untouched"
    for name in ("rd2", "rd4"):
        assert json.loads((out / f"{name}-h0.6" / "config.json").read_text())["model"] == \
            {"student_t": "late", "handover": 0.6}
    assert not (out / "rd-h0.6").exists() and not (out / "rf-h0.6").exists()
    table = (out / "results-h0.6.md").read_text()
    assert "| rd4 |" in table and "| rd |" in table and "| rd4 training" in table and "nan img/s" not in table
    (out / "results-h0.6.md").unlink()
    proc = Run(capsys, out, "--stages=eval", "--students=rd,rf", "--handover=0.6")   # no phased student: no suffix
    assert proc.returncode == 0 and not (out / "results-h0.6.md").exists() and (out / "results.md").exists()
    shutil.rmtree(out / "rd4-h0.6")
    (out / "rd4").rename(out / "rd4-h0.6")                         # the default's rd4 under the 0.6 name
    proc = Run(capsys, out, "--stages=students", "--students=rd4", "--handover=0.6")
    assert proc.returncode != 0 and "rd4-h0.6/ckpt.pt was written with another config" in proc.stderr \
        and "'handover': 0.6" in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_older_defaults_are_recognised_from_the_difference_alone():
    """A student folder of both older defaults gets both renames; any other difference gets no hint."""
    late, huber = ({}, {"student_t": "late"}), ({"lr": 2e-4, "loss": "huber"}, {"lr": 2e-4})
    assert older_default({"model": late, "train": huber}) == ("-huber-tschedule",
                                                             "--student_loss=huber --student_t=schedule")
    assert older_default({"train": huber}) == ("-huber", "--student_loss=huber")
    assert older_default({"model": late}) == ("-tschedule", "--student_t=schedule")
    assert older_default({"train": ({"lr": 1e-4, "loss": "huber"}, {"lr": 2e-4})}) is None      # and another LR
    assert older_default({"model": late, "schedule": ("vp-sd", "fm")}) is None
    assert older_default({"model": ({"student_t": "uniform"}, {"student_t": "late"})}) is None
    assert older_default({}) is None


def test_a_stage_without_its_input_stops_with_a_clear_error(tmp_path, capsys):
    proc = Run(capsys, tmp_path, "--stages=students")
    assert proc.returncode != 0 and "run the 'teacher' stage first" in proc.stderr
    proc = Run(capsys, tmp_path, "--stages=teacher")
    assert proc.returncode == 0 and "stage teacher done" in proc.stdout and not (tmp_path / "pairs").exists()
    proc = Run(capsys, tmp_path, "--stages=students")
    assert proc.returncode != 0 and "manifest.json" in proc.stderr, "pairs missing: the error names the pair directory"
    proc = Run(capsys, tmp_path, "--stages=teacher,eval")
    assert proc.returncode != 0 and "run the 'students' stage first" in proc.stderr
    proc = run(tmp_path, "--stages=teacher", "--form=vp-sd-eps")    # another form where a teacher is: said, no traceback
    assert proc.returncode != 0 and "was written with another config" in proc.stderr and "'pred_type'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = Run(capsys, tmp_path, "--stages=teacher", "--teacher_weight=x0")    # the weighting is part of the teacher
    assert proc.returncode != 0 and "another config" in proc.stderr and "'weight_like': 'x0'" in proc.stderr


def test_the_evaluation_draws_its_noise_from_a_named_stream(finished, tmp_path, capsys, monkeypatch):
    """The FID samples start from rd.dist.named_noise(seed, "eval noise", …), a stream no pair shard draws from (seed + k,
    the old seed, was shard k's at seed 0: tests/test_rectify.py)."""
    import rd.evaluate
    from rd import dist
    names = []

    def recorded(seed, name, shape):
        names.append((seed, name))
        return dist.named_noise(seed, name, shape)
    monkeypatch.setattr(rd.evaluate, "named_noise", recorded)
    shutil.copytree(finished[0], tmp_path / "run")
    proc = Run(capsys, tmp_path / "run", "--stages=eval")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert names == [(0, "eval noise")]
