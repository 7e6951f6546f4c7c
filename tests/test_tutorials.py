"""The tutorials run end to end (smoke size) and leave their figures and tables behind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tutorial(name, out):
    env = dict(os.environ, RD_SMOKE="1", RD_OUT=str(out), TQDM_DISABLE="1", MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT))                           # this clone's rd, whichever clone is installed
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / name)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorials")


def test_a_smoke_setting_other_than_1_is_refused_not_taken_for_a_full_run(tmp_path):
    env = dict(os.environ, RD_SMOKE="yes", RD_OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "04_fused_groupnorm.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RD_SMOKE='yes': set RD_SMOKE=1 for the smoke run" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def test_01_schedules_2d(out):
    stdout = run_tutorial("01_schedules_2d.py", out)
    for fig in ("01_schedules.png", "01_first_order_paths.png", "01_teacher_paths.png"):
        assert (out / fig).stat().st_size > 10_000, fig
    assert "FM/flow" in stdout and "first-order paths" in stdout


def test_02_rectification_2d(out):
    stdout = run_tutorial("02_rectification_2d.py", out)
    assert (out / "02_samples.png").stat().st_size > 10_000
    table = (out / "02_results.md").read_text()
    for row in ("| VP/eps RD |", "| VP/eps RF (FM, velocity) |", "| VP/eps RD, loss weighted like v |",
                "| VP/eps phased RD K=4 |", "| VP/eps 2-RD (second round) |"):
        assert row in table and row in stdout


def test_04_fused_groupnorm(out):
    stdout = run_tutorial("04_fused_groupnorm.py", out)
    assert (out / "04_variance_error.png").stat().st_size > 10_000
    assert "backward formula vs autograd, dx" in stdout and "bytes per element" in stdout
    errors = [float(line.rsplit(" ", 1)[1]) for line in stdout.splitlines() if "max |error|" in line and "kernel" not in line]
    assert len(errors) == 7 and max(errors) < 1e-12, errors


def test_05_latent_sd(out):
    stdout = run_tutorial("05_latent_sd.py", out)
    for fig in ("05_data_autoencoder.png", "05_samples.png"):
        assert (out / fig).stat().st_size > 10_000, fig
    table = (out / "05_results.md").read_text()
    for row in ("| teacher, no guidance | 25 |", "| teacher, CFG w=3 | 25 |", "| RD | 1 |", "| RF | 1 |", "| RD | 2 |"):
        assert row in table and row in stdout, row
    assert "<unk>" in stdout                                    # the unknown-word demonstration ran


def test_03_cifar10(out):
    stdout = run_tutorial("03_cifar10.py", out / "cifar")
    assert (out / "cifar" / "03_form_weights.png").stat().st_size > 10_000
    for row in ("| vp-sd-eps |", "| edm |", "| rd |", "| RD ÷ RF at 1 call |"):
        assert row in stdout, row
