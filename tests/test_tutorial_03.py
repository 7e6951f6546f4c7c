"""Tutorial 03 (CIFAR-10 pipeline) at smoke size: all stages, one stage at a time, resume and refusal."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(out, **env):
    env = dict(os.environ, RD_SMOKE="1", RD_OUT=str(out), TQDM_DISABLE="1", MPLBACKEND="Agg", **env)
    return subprocess.run([sys.executable, str(ROOT / "tutorials" / "03_cifar10.py")], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar")
    proc = run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_whole_pipeline_leaves_tables_grids_and_logs(finished):
    out, stdout = finished
    table = (out / "results.md").read_text()
    for row in ("| teacher |", "| RD |", "| RF |", "| RD-v |",
                "| stage (summed over invocations; eval = sampling + FID) |",
                "pair generation", "teacher training", "teacher sampling, 4 calls"):
        assert row in table and row in stdout, row
    assert (out / "samples.png").stat().st_size > 10_000
    for stage in ("teacher", "rd", "rf", "rdv"):
        assert "img/s" in (out / stage / "log.txt").read_text()
    assert (out / "pairs" / "manifest.json").is_file()
    steps = {s: torch.load(out / s / "ckpt.pt", weights_only=True)["step"] for s in ("rd", "rf", "rdv")}
    assert steps["rd"] == steps["rf"] == steps["rdv"] > 0, f"RF and RD-v must take RD's step count: {steps}"
    weights = {s: torch.load(out / s / "ckpt.pt", weights_only=True)["config"]["train"]["weight_like"]
               for s in ("rd", "rdv")}
    assert weights == {"rd": None, "rdv": "v"}, weights
    minutes = json.loads((out / "minutes.json").read_text())
    assert list(minutes) == ["data", "teacher", "pairs", "RD", "RF", "RD-v", "eval"]
    assert all(v > 0 for v in minutes.values())


def test_rerun_loads_finished_stages_without_training(finished):
    out, _ = finished
    logs = {s: (out / s / "log.txt").read_text() for s in ("teacher", "rd", "rf", "rdv")}
    proc = run(out, RD_STAGE="eval")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("is finished") == 4
    assert "pairs/s" in proc.stdout, "the pair rate of the invocation that made them is kept (pairs_rate.json)"
    stages = ("teacher", "rd", "rf", "rdv")
    assert logs == {s: (out / s / "log.txt").read_text() for s in stages}, "nothing was retrained"


def test_a_stage_without_its_input_stops_with_a_clear_error(tmp_path):
    proc = run(tmp_path, RD_STAGE="rd")
    assert proc.returncode != 0 and "run the 'teacher' stage first" in proc.stderr
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "rd").exists()
    proc = run(tmp_path, RD_STAGE="teacher")
    assert proc.returncode == 0 and "stage teacher done" in proc.stdout and not (tmp_path / "pairs").exists()
    proc = run(tmp_path, RD_STAGE="rd")
    assert proc.returncode != 0 and "manifest.json" in proc.stderr, "pairs missing: the error names the pair directory"
    proc = run(tmp_path, RD_STAGE="students")
    assert proc.returncode != 0 and "RD_STAGE must be 'all' or one of teacher, pairs, rd, rf, rdv, eval" in proc.stderr
    proc = run(tmp_path, RD_PRESET="huge")
    assert proc.returncode != 0 and "RD_PRESET: unknown UNet preset 'huge'; allowed: cifar" in proc.stderr
