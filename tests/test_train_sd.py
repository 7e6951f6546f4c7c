"""train_sd.py at its tiny preset: every stage, stage-by-stage = all at once, resume, refusals of a run folder. Its
flags, refused before any work, and --help: test_train_sd_flags.py."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import record_late_t
from helpers import train_sd_refused as refused
from helpers import train_sd_run as run

from rd.io import ConfigMismatch, UnreadableFile

pytestmark = [pytest.mark.e2e,                 # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)
              pytest.mark.usefixtures("tf32_as_it_was")]

ROOT = Path(__file__).resolve().parents[1]


def here(capsys, *flags) -> str:
    """train_sd.main(flags) in this process, expected to succeed: its stdout."""
    import train_sd
    train_sd.main(list(flags))
    return capsys.readouterr().out


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd")
    return out, ok(run("--preset=tiny", f"--out={out}"))


def test_every_stage_runs_and_leaves_a_table_and_a_figure(whole):
    out, stdout = whole
    for stage in ("ae", "teacher", "rd", "rf", "phased"):
        assert (out / stage / "ckpt.pt").is_file() and "img/s" in (out / stage / "log.txt").read_text(), stage
    for stage in ("ae", "teacher", "pairs", "rd", "rf", "phased"):                   # a sample grid per stage
        assert (out / stage / "grid.png").stat().st_size > 5_000, stage
    assert (out / "pairs" / "manifest.json").is_file() and (out / "prompts.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    expected = {"teacher@25", "teacher@1", "teacher@2", "teacher@4", "RD@1", "RD@2", "RD@4", "RF@1", "RF@2", "RF@4",
                "phased RD (K=4)@4"}
    assert expected <= set(results), sorted(results)
    assert all(0 <= v["fidelity"] <= 1 for k, v in results.items() if k != "real_fidelity")
    assert "| phased RD (K=4) | 4 |" in stdout and "prompt fidelity" in (out / "results.md").read_text()
    assert "| autoencoder reconstructions | – |" in stdout and "minutes per stage" in (out / "results.md").read_text()
    assert "preset tiny: a test-sized run" in stdout, "the tiny preset's numbers must say they mean nothing"
    minutes = json.loads((out / "minutes.json").read_text())
    assert set(minutes) == {"data", "ae", "teacher", "pairs", "rd", "rf", "phased", "eval"}


CRASH = """
import runpy, sys
import rd.train
real, calls = rd.train.atomic_save, []

def crashing(obj, path):                  # the 2nd checkpoint write: the teacher's second (the ae is finished)
    calls.append(path)
    if len(calls) == 2:
        raise KeyboardInterrupt("simulated crash")
    real(obj, path)

rd.train.atomic_save = crashing
sys.argv = ["train_sd.py", "--preset=tiny", "--out=" + sys.argv[1]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_crash_mid_stage_then_stage_by_stage_reruns_equal_an_uninterrupted_run(whole, tmp_path, capsys):
    out, _ = whole
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg")
    # GPU kernels (attention, convolution backward) are not bitwise reproducible: the equality is the CPU's, so on a
    # machine with a GPU both runs go to processes that do not see it
    gpu, cpu = torch.cuda.is_available(), {"CUDA_VISIBLE_DEVICES": ""}
    if gpu:
        env |= cpu
        out = tmp_path.parent / f"{tmp_path.name}-uninterrupted"
        ok(run("--preset=tiny", f"--out={out}", env=cpu))

    def again(*flags):                    # the resumed run's stages
        return ok(run(*flags, env=cpu)) if gpu else here(capsys, *flags)

    shutil.copytree(out / "ae", tmp_path / "ae")     # the uninterrupted run's autoencoder: the crash is the teacher's
    proc = subprocess.run([sys.executable, "-c", CRASH.format(script=str(ROOT / "train_sd.py")), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr
    assert torch.load(tmp_path / "teacher" / "ckpt.pt", weights_only=True)["step"] == 3, "the last checkpoint kept"
    assert not (tmp_path / "pairs").exists()
    stdout = "".join(again("--preset=tiny", f"--out={tmp_path}", f"--stages={s}") for s in ("teacher", "pairs", "rd"))
    assert "teacher: resumed from" in stdout and "at step 3" in stdout
    a = torch.load(out / "rd" / "ckpt.pt", weights_only=True)["ema"]["model"]
    b = torch.load(tmp_path / "rd" / "ckpt.pt", weights_only=True)["ema"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        "resumed after a crash, stage by stage = never interrupted, all at once"
    again("--preset=tiny", f"--out={tmp_path}")                                  # the rest: rf, phased, eval
    assert json.loads((out / "results.json").read_text()) == json.loads((tmp_path / "results.json").read_text())
    # a moved run folder and another --time_scale are the same run (each stage's checkpoint keeps its own caps)
    log = (tmp_path / "teacher" / "log.txt").read_text()
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    stdout = again("--preset=tiny", f"--out={moved}", "--stages=rd", "--time_scale=0.5")
    assert "is finished" in stdout and (moved / "teacher" / "log.txt").read_text() == log, "nothing retrained"


def test_a_damaged_classifier_is_named_with_what_to_do(whole, tmp_path, capsys):
    out, _ = whole
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / "classifier" / "ckpt.pt").write_bytes(b"not a checkpoint")
    import train_sd                   # the script turns this error into its message and exit status 1 (test below)
    with pytest.raises(UnreadableFile, match="is not a readable classifier of this run") as err:
        train_sd.main(["--preset=tiny", f"--out={tmp_path / 'run'}", "--stages=eval"])
    assert "delete it and rerun" in str(err.value)


def test_a_later_student_of_more_steps_than_rd_is_refused_by_name(whole, tmp_path):
    import train_sd
    out, _ = whole
    shutil.copytree(out, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "rf" / "ckpt.pt", weights_only=False)
    torch.save(ckpt | {"step": ckpt["step"] + 1}, tmp_path / "run" / "rf" / "ckpt.pt")     # as if from a longer run
    with pytest.raises(ConfigMismatch, match=rf"rf/ckpt.pt holds a student of {ckpt['step'] + 1} steps, rd took "
                                             rf"{ckpt['step']}: the comparison needs equal steps; delete"):
        train_sd.main(["--preset=tiny", f"--out={tmp_path / 'run'}", "--stages=rd"])


def test_missing_prerequisite_and_other_config_are_refused(tmp_path, capsys):
    import train_sd
    with pytest.raises(FileNotFoundError, match="run the 'ae' stage first"):         # the script exits 1 with it
        train_sd.main(["--preset=tiny", f"--out={tmp_path}", "--stages=teacher"])
    assert not (tmp_path / "teacher").exists()
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--guidance=2.0")
    assert "another configuration" in code and "args.guidance: 3.0 → 2.0" in code
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--form=vp-sd-eps")
    assert "args.form: 'vp-sd-v' → 'vp-sd-eps'" in code, code
    code, _ = refused(capsys, "--preset=cpu", f"--out={tmp_path}")          # another preset: name the run's own
    assert "preset: 'tiny' → 'cpu'" in code and "rerun with its flags (--preset=tiny)," in code, code
    with pytest.raises(FileNotFoundError):                                  # a tiny run with a size of its own
        train_sd.main(["--preset=tiny", "--n_pairs=40", f"--out={tmp_path / 'b'}", "--stages=teacher"])
    code, _ = refused(capsys, "--preset=cpu", f"--out={tmp_path / 'b'}", "--n_pairs=40")
    assert "rerun with its flags (--preset=tiny --n_pairs=40)," in code, code
    config = json.loads((tmp_path / "config.json").read_text())["args"]
    assert config["guidance"] == 3.0 and config["form"] == "vp-sd-v", "nothing overwritten"


def test_a_run_folder_from_before_a_new_flag_resumes(whole, tmp_path, capsys):
    """A config.json without the fields added since (--latent_channels, --batch_per_process, --compile, ...) is the
    same run when the new fields are at their defaults; one it records at another value ties it still."""
    import train_sd
    out, _ = whole
    shutil.copytree(out / "ae", tmp_path / "ae")
    config = json.loads((out / "config.json").read_text())
    for key in ("batch_per_process", "compile", "teacher_weight", "stages", *train_sd.SIZES):   # SIZES: latent_channels, …
        del config["args"][key]
    config["args"]["stage"] = None                   # a flag since removed, which did not tie the run
    del config["size"]["latent_channels"]
    (tmp_path / "config.json").write_text(json.dumps(config | {"size": config["size"] | {"teacher_min": 1}}))
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae")
    assert "size.teacher_min: 1 → 0.0" in code and "rerun with its flags (--teacher_min=1)" in code, code
    (tmp_path / "config.json").write_text(json.dumps(config))
    train_sd.main(["--preset=tiny", f"--out={tmp_path}", "--stages=ae"])
    assert "ae done" in capsys.readouterr().out
    here(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae", "--latent_channels=4")   # = the preset's 4
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae", "--latent_channels=8")
    assert "size.latent_channels: 4 → 8" in code, code
    here(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae", "--teacher_steps=12")        # = the preset's 12
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae", "--teacher_steps=13")
    assert "size.teacher_steps: 12 → 13" in code and "rerun with its flags (--teacher_steps=12)" in code, code
    (tmp_path / "config.json").write_text(json.dumps(config | {"args": config["args"] | {"minutes": [2, 12, 2.5]}}))
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=ae", "--teacher_steps=13")   # a removed
    assert "size.teacher_steps: 12 → 13" in code, code           # flag that tied it: no rerun's flags can match it
    assert "args.minutes: [2, 12, 2.5] → not set" in code and "--minutes: set by an older train_sd.py" in code, code
    assert "rerun with its flags" not in code and "pass another --out, or delete the folder" in code, code


def test_another_form_trains_the_teacher_pairs_and_rd_in_that_form(whole, tmp_path, capsys):
    """--form=vp-sd-zsnr-v (SD 2's v on the zero-terminal-SNR schedule): teacher, pairs and RD student in that form, on
    the autoencoder of the default run (it does not depend on the form). The checkpoints keep the form's schedule and
    prediction type, so rd.train refuses to resume them in another form (tests/test_train.py)."""
    out, _ = whole
    shutil.copytree(out / "ae", tmp_path / "ae")
    stdout = here(capsys, "--preset=tiny", f"--out={tmp_path}", "--form=vp-sd-zsnr-v", "--stages=rd,teacher,pairs")
    assert "teacher form vp-sd-zsnr-v" in stdout and "stages teacher,pairs,rd" in stdout and "rd done" in stdout
    assert not (tmp_path / "rf").exists(), "a comma list runs its stages in the pipeline's order and stops after the last"
    for stage in ("teacher", "rd"):
        config = torch.load(tmp_path / stage / "ckpt.pt", weights_only=True)["config"]
        assert (config["schedule"], config["pred_type"]) == ("vp-sd-zsnr", "v"), stage
    pairs = json.loads((tmp_path / "pairs" / "manifest.json").read_text())["config"]
    assert (pairs["schedule"], pairs["pred_type"], pairs["clean"]) == ("vp-sd-zsnr", "v", True)
    assert (tmp_path / "rd" / "grid.png").stat().st_size > 5_000


def test_teacher_weight_weighs_the_teachers_loss_and_names_the_run(whole, tmp_path, capsys, monkeypatch):
    """The default run weighs its vp-sd-v teacher's loss like ε's (rd.predictions.TEACHER_RECIPES); --teacher_weight=
    (the form's own loss) is recorded in the teacher's checkpoint and names the default run folder."""
    out, _ = whole
    assert torch.load(out / "teacher" / "ckpt.pt", weights_only=True)["config"]["train"]["weight_like"] == "eps"
    shutil.copytree(out / "ae", tmp_path / "runs" / "sd-tiny-vp-sd-v-loss-own" / "ae")
    monkeypatch.chdir(tmp_path)
    assert "teacher done" in here(capsys, "--preset=tiny", "--teacher_weight=", "--stages=teacher")
    config = torch.load(tmp_path / "runs" / "sd-tiny-vp-sd-v-loss-own" / "teacher" / "ckpt.pt", weights_only=True)["config"]
    assert config["train"].get("weight_like") is None and config["pred_type"] == "v", config["train"]
    code, err = refused(capsys, "--preset=tiny", "--teacher_weight=snr")
    assert code == 2 and "train_sd.py: error: --teacher_weight='snr': allowed: auto (the form's), '' (the form's own), eps, x0, v" in err


def test_student_t_late_trains_rd_and_rf_towards_t_max(whole, tmp_path, capsys, monkeypatch):
    """--student_t=late: RD's and RF's batches take rd.schedules.late_t on their own schedules, phased RD its form's."""
    out, _ = whole
    for stage in ("ae", "teacher", "pairs"):
        shutil.copytree(out / stage, tmp_path / stage)
    drawn = record_late_t(monkeypatch)
    stdout = here(capsys, "--preset=tiny", f"--out={tmp_path}", "--student_t=late", "--stages=rd,rf,phased")
    assert "phased done" in stdout
    assert set(drawn) == {"vp-sd", "fm"} and drawn.count("vp-sd") == drawn.count("fm") > 0, drawn  # not for phased
    assert json.loads((tmp_path / "config.json").read_text())["args"]["student_t"] == "late"
    code, err = refused(capsys, "--preset=tiny", "--student_t=middle")
    assert code == 2 and "--student_t='middle': allowed: schedule, uniform, late" in err


def test_handover_reaches_the_phased_student_only_and_is_part_of_the_run(whole, tmp_path, capsys, monkeypatch):
    """--handover=0.6 goes to phased RD's batches (RD's are the pairs' ends: one phase, no handover); the run folder
    records it, so a rerun with another handover is refused; a handover outside [0, 1) is refused before any work."""
    out, _ = whole
    for stage in ("ae", "teacher", "pairs"):
        shutil.copytree(out / stage, tmp_path / stage)
    import train_sd
    handovers, real = [], train_sd.pair_batches
    monkeypatch.setattr(train_sd, "pair_batches", lambda pairs, sch, handover=0.3, sample_t=None:
                        handovers.append((len(pairs.boundaries) - 1, handover)) or real(pairs, sch, handover, sample_t))
    stdout = here(capsys, "--preset=tiny", f"--out={tmp_path}", "--handover=0.6", "--stages=rd,rf,phased")
    assert "phased done" in stdout and sorted(handovers) == [(1, 0.3), (4, 0.6)], handovers
    assert json.loads((tmp_path / "config.json").read_text())["args"]["handover"] == 0.6
    code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path}", "--stages=phased")
    assert "holds a run with another configuration" in code and "args.handover: 0.6 → 0.3" in code, code
    for bad in ("1", "-0.1"):
        code, err = refused(capsys, "--preset=tiny", f"--handover={bad}")
        assert code == 2 and "a fraction of a phase in [0, 1)" in err, err


class PooledFeatures(torch.nn.Module):
    """A stand-in for the Inception network: (B, 3, 299, 299) → (B, 2048) average-pooled pixels."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, (26, 27)).flatten(1)[:, :2048]


def test_latent_channels_and_the_autoencoders_floor(tmp_path, capsys):
    """--latent_channels sets the autoencoder's z channels; with --inception the ae stage scores its reconstructions
    of held-out images (the floor of every latent model) and keeps the number in ae/floor.json."""
    net = tmp_path / "features.pt"
    torch.jit.script(PooledFeatures()).save(str(net))
    stdout = here(capsys, "--preset=tiny", f"--out={tmp_path / 'run'}", "--stages=ae", "--latent_channels=8",
                  "--ae_steps=6", f"--inception={net}")
    floor = json.loads((tmp_path / "run" / "ae" / "floor.json").read_text())
    assert floor["images"] == 24 and floor["fid"] > 0, floor
    assert f"score FID {floor['fid']:.2f}" in stdout and "latents (256, 8, 8, 8)" in stdout, stdout[-2000:]
    ckpt = torch.load(tmp_path / "run" / "ae" / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["model"]["latent_channels"] == 8 and ckpt["step"] == 6, "--ae_steps=6 over the preset's 12"


def test_the_evaluation_and_the_grids_draw_their_noise_from_named_streams(whole, tmp_path, capsys, monkeypatch):
    """The evaluation's and the stage grids' noise come from rd.dist.named_noise, streams no pair shard draws from
    (seed + k, the old seeds, were shard k's at seed 0: tests/test_rectify.py)."""
    import rd.sd.evaluate
    import train_sd
    from rd import dist
    names = []

    def recorded(seed, name, shape):
        names.append((seed, name))
        return dist.named_noise(seed, name, shape)
    monkeypatch.setattr(rd.sd.evaluate, "named_noise", recorded)
    monkeypatch.setattr(train_sd, "named_noise", recorded)
    shutil.copytree(whole[0], tmp_path / "run")
    train_sd.main(["--preset=tiny", f"--out={tmp_path / 'run'}", "--stages=eval"])
    assert "results in" in capsys.readouterr().out
    assert sorted(set(names)) == [(0, "eval noise"), (0, "grid noise")], names
