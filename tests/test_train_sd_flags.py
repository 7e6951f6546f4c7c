"""train_sd.py's command line before any work: --help, the global batch over processes, and every bad flag or input
refused with its value and what to do (exit 2; a damaged config.json exit 1), nothing written. The runs:
test_train_sd.py."""
import pytest
import torch
from helpers import train_sd_refused as refused
from helpers import train_sd_run as run

pytestmark = pytest.mark.usefixtures("tf32_as_it_was")   # train_sd.py turns TF32 on (tests/conftest.py)


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_work(tmp_path):
    from rd.dist import Context
    from train_sd import parse_args, pipeline
    with pytest.raises(SystemExit, match="a batch of 15 does not split over 2 processes; pass a --batch divisible"):
        pipeline(parse_args(["--preset=tiny", "--batch=15", f"--out={tmp_path / 'run'}"]), Context(world=2))
    assert not (tmp_path / "run").exists()


def test_the_global_batch_is_split_or_per_process():
    from rd.dist import global_batch
    from train_sd import PRESETS, parse_args
    gpu = PRESETS["gpu"]["batch"]
    for flags, world, expected in [([], 2, gpu), (["--batch_per_process=true"], 2, 2 * gpu),  # split: 128 per process
                                   (["--batch_per_process=true"], 1, gpu)]:
        args = parse_args(["--preset=gpu", *flags])
        assert global_batch(args.batch, world, args.batch_per_process) == expected, (flags, world)


def test_bad_flags_presets_data_and_torchrun_on_cpu(tmp_path, capsys, monkeypatch):
    import train_sd
    for flags, message in [
            (["--bogus=1"], "unrecognized arguments: --bogus=1"),
            (["--preset=huge"], "argument --preset: invalid choice: 'huge' (choose from 'auto', 'cpu', 'gpu', 'tiny')"),
            (["--form=vp-sd-x0"], "--form='vp-sd-x0': allowed: vp-cosine-v, vp-sd-eps, vp-sd-v, vp-sd-zsnr-v"),
            (["--form=edm"], "--form='edm': EDM's preconditioning assumes data of std σ_d = 0.5")]:   # σ_d ≠ the latents'
        code, err = refused(capsys, *flags)
        assert code == 2 and message in err, (flags, err)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found") as err:
        train_sd.main(["--preset=tiny", "--data=cifar10", f"--cifar={tmp_path / 'nope'}", f"--out={tmp_path / 'c'}"])
    assert "cifar10-jpg.tar.gz" in str(err.value)
    if not torch.cuda.is_available():
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        code, _ = refused(capsys, "--preset=tiny", f"--out={tmp_path / 'd'}")
        assert "needs CUDA" in code and not (tmp_path / "d").exists()


def test_help_lists_every_flag_with_its_default(capsys):
    import train_sd
    with pytest.raises(SystemExit) as stop:
        train_sd.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())                           # argparse wraps long lines
    for flag, default in (("--preset", "auto"), ("--data", "shapes"), ("--form", "vp-sd-v"), ("--out", ""),
                          ("--stages", "all"),
                          ("--guidance", "3.0"), ("--phases", "4"), ("--seed", "0"), ("--inception", ""),
                          ("--cifar", "data/cifar10-jpg.tar.gz"), ("--n_pairs", "2000"), ("--ae", "tiny")):
        help_of_flag = text.split(f"{flag} ", 2)[-1].split(" --", 1)[0]
        assert f"(default: {default})" in help_of_flag, (flag, help_of_flag)
    assert "tiny: n_train=256, ae=tiny, ae_steps=12," in text, "--preset's help lists each preset's sizes"


def test_bad_input_is_refused_at_start_with_the_value_and_the_fix(tmp_path, capsys):
    """Non-finite numbers, a wrong --inception or --out, a damaged config.json: a clear message, no work."""
    out, text = tmp_path / "run", tmp_path / "notes.md"
    text.write_text("a text file, not a network\n")
    for flags, status, message in [
            (["--time_scale=nan"], 2, "argument --time_scale: expected a finite number, got 'nan'"),
            (["--time_scale=0"], 2, "train_sd.py: error: --time_scale=0.0: must be > 0"),
            (["--latent_channels=-4"], 2, "--latent_channels=-4: must be ≥ 1"),
            (["--teacher_min=-1"], 2, "--teacher_min=-1.0: must be ≥ 0"),
            (["--pair_steps=3"], 2, "--pair_steps=3: needs at least one step per phase (--phases=4)"),
            (["--ae=huge"], 2, "--ae='huge': unknown autoencoder preset 'huge'; allowed: tiny, small, base"),
            (["--guidance=inf"], 2, "argument --guidance: expected a finite number, got 'inf'"),
            (["--inception=/nonexistent.pt"], 2, "--inception='/nonexistent.pt': no such file; DATA.md says where"),
            ([f"--inception={text}"], 2, "notes.md is not a TorchScript file"),
            ([f"--out={text}"], 2, "notes.md is a file, not a folder"),
            (["--n_pairs=0"], 2, "--n_pairs=0: must be ≥ 1"),
            (["--channels=48"], 2, "--channels=48: must be a multiple of 32"),
            (["--text_dim=66"], 2, "--text_dim=66: must be a multiple of the text encoder's 4 heads"),
            (["--guidance=0.5", "--phases=0"], 2, "--phases=0: must be ≥ 1\ntrain_sd.py: error: --guidance=0.5: must be ≥ 1"),
            (["--stages=teacher,bogus"], 2, "--stages='teacher,bogus': use 'all' or a comma list of ae, teacher, "
                                            "pairs, rd, rf, phased, eval")]:
        code, err = refused(capsys, "--preset=tiny", f"--out={out}", *flags)
        assert code == status and message in err, (flags, err[-2000:])
        assert not out.exists(), flags
    out.mkdir()                               # the script itself: exit status 1, the message, no traceback
    (out / "config.json").write_text('{"args": {"preset": "ti')
    proc = run("--preset=tiny", f"--out={out}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{out / 'config.json'} is not valid JSON" in proc.stderr and f"delete {out} to start over" in proc.stderr
