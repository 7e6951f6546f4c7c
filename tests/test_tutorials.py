"""The tutorials run end to end (smoke size) and leave their figures and tables behind."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import smoke_env

pytestmark = pytest.mark.e2e              # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]


# the smoke runs, longest first; two run at a time with one thread each (CI has two cores), each in its own folder.
# Tutorial 03 runs in tests/test_cifar.py: its smoke run is the pipeline those tests check.
TUTORIALS = ("05_latent_sd.py", "02_rectification_2d.py", "01_schedules_2d.py", "04_fused_groupnorm.py")


class SmokeRuns:
    """Every tutorial's smoke run in a subprocess, started two at a time on first use; run(name) waits for its own."""

    def __init__(self, base: Path):
        self.base, self.todo, self.running, self.done = base, list(TUTORIALS), {}, {}

    def _start(self):
        while self.todo and len(self.running) < 2:
            name = self.todo.pop(0)
            env = smoke_env(self.base / name[:2], OMP_NUM_THREADS="1")
            log = open(self.base / f"{name}.log", "w+")
            self.running[name] = (subprocess.Popen([sys.executable, str(ROOT / "tutorials" / name)], env=env,
                                                   stdout=log, stderr=subprocess.STDOUT, text=True), log, time.time())

    def run(self, name: str) -> tuple[Path, str]:
        """(the tutorial's output folder, its printout); fails with the printout's end if it failed."""
        while name not in self.done:
            self._start()
            for other, (proc, log, start) in list(self.running.items()):
                if proc.poll() is None and time.time() - start > 600:
                    proc.kill()
                if proc.poll() is not None:
                    log.seek(0)
                    self.done[other] = (proc.returncode, log.read())
                    log.close()
                    del self.running[other]
            time.sleep(0.2)
        code, text = self.done[name]
        assert code == 0, f"{name} failed:\n{text[-5000:]}"
        return self.base / name[:2], text

    def close(self):
        for proc, log, _ in self.running.values():             # nothing left running after a failure
            proc.kill()
            log.close()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    runs = SmokeRuns(tmp_path_factory.mktemp("tutorials"))
    yield runs
    runs.close()


def test_a_smoke_setting_other_than_1_is_refused_not_taken_for_a_full_run(tmp_path):
    env = smoke_env(tmp_path, RD_SMOKE="yes")
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "04_fused_groupnorm.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RD_SMOKE='yes': set RD_SMOKE=1 for the smoke run" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def test_01_schedules_2d(smoke):
    out, stdout = smoke.run("01_schedules_2d.py")
    for fig in ("01_schedules.png", "01_first_order_paths.png", "01_teacher_paths.png"):
        assert (out / fig).stat().st_size > 10_000, fig
    assert "FM/flow" in stdout and "first-order paths" in stdout


def test_02_rectification_2d(smoke):
    out, stdout = smoke.run("02_rectification_2d.py")
    assert (out / "02_samples.png").stat().st_size > 10_000
    table = (out / "02_results.md").read_text()
    for row in ("| VP/eps RD |", "| VP/eps RF (FM, velocity) |", "| VP/eps RD, loss weighted like v |",
                "| VP/eps RD, late times |", "| VP/eps RF, late times |", "| VP/eps phased RD K=4 |",
                "| VP/eps phased RD K=4, towards phase starts |",
                "| VP/eps phased RD K=4, towards phase starts, handover 0.6 |", "| VP/eps 2-RD (second round) |"):
        assert row in table and row in stdout


def test_04_fused_groupnorm(smoke):
    out, stdout = smoke.run("04_fused_groupnorm.py")
    assert (out / "04_variance_error.png").stat().st_size > 10_000
    assert "backward formula vs autograd, dx" in stdout and "bytes per element" in stdout
    errors = [float(line.rsplit(" ", 1)[1]) for line in stdout.splitlines() if "max |error|" in line and "kernel" not in line]
    assert len(errors) == 7 and max(errors) < 1e-12, errors


def test_05_latent_sd(smoke):
    out, stdout = smoke.run("05_latent_sd.py")
    for fig in ("05_data_autoencoder.png", "05_samples.png"):
        assert (out / fig).stat().st_size > 10_000, fig
    table = (out / "05_results.md").read_text()
    for row in ("| teacher, no guidance | 25 |", "| teacher, CFG w=3 | 25 |", "| RD | 1 |", "| RF | 1 |", "| RD | 2 |"):
        assert row in table and row in stdout, row
    assert "<unk>" in stdout                                    # the unknown-word demonstration ran
