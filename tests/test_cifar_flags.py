"""rd.cifar's command line before any work: each teacher form's recipe, the students' warm-up, and every bad flag
refused with its value and what to do (exit 2, nothing written). The runs themselves: test_cifar.py."""
import pytest
import torch

from rd.cifar import CifarConfig, main, student_warmup


def test_every_student_warms_up_alike_for_at_most_a_fifth_of_its_steps():
    for steps, minutes, warmup in [(1000, 0.0, 200), (250, 0.0, 50), (2, 0.0, 1), (0, 3.0, 200)]:
        cfg = CifarConfig(student_steps=steps, student_min=minutes)
        assert student_warmup(cfg) == warmup, (steps, minutes)
    assert student_warmup(CifarConfig(warmup=30, student_steps=1000)) == 30


def test_each_form_takes_its_measured_recipe_unless_told_otherwise():
    """--teacher_weight=auto and --lr=0 (the defaults) stand for the form's weighting and LR; given values win."""
    from rd.cifar import CifarConfig, with_recipe
    from rd.predictions import FORMS, TEACHER_RECIPES
    assert list(TEACHER_RECIPES) == list(FORMS), "every form has its recipe, listed in FORMS' order"
    recipe = lambda **kw: (lambda c: (c.teacher_weight, c.lr))(with_recipe(CifarConfig(**kw)))   # noqa: E731
    assert recipe() == recipe(form="vp-sd-v") == ("eps", 5e-4)
    assert recipe(form="edm") == ("", 5e-4)
    for form in ("vp-sd-eps", "vp-cosine-v", "vp-sd-zsnr-v"):
        assert recipe(form=form) == ("", 1e-3), form
    assert recipe(teacher_weight="", lr=1e-3) == ("", 1e-3)                  # vp-sd-v with its own loss, as before
    assert recipe(form="vp-sd-zsnr-v", teacher_weight="x0", lr=2e-4) == ("x0", 2e-4)


@pytest.mark.parametrize("flags,message", [
    (["--stages=bogus"], "--stages='bogus': use 'all' or a comma list of teacher, pairs, students, eval"),
    (["--form=vp-foo"], "unknown teacher form; allowed: vp-cosine-v"),
    (["--unet=huge"], "unknown UNet preset 'huge'"),
    (["--teacher_min=nan"], "expected a finite number"),
    (["--teacher_min=-1"], "--teacher_min=-1.0: must be ≥ 0"),
    (["--teacher_steps=0", "--teacher_min=0"], "the teacher needs a budget"),
    (["--students=rd,rd3"], "rd3 needs phases divisible by 3"),
    (["--students=rd,rd0"], "unknown student 'rd0': use rd, rf or rd<K>"),
    (["--data=/nonexistent/cifar"], "rd.data.download(\"data\")' fetches CIFAR-10"),
    (["--inception=/nonexistent.pt"], "pass --inception='' to skip FID"),
    (["--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["--compile=maybe"], "expected true or false"),
    (["--teacher_calls=1,x"], "a comma list of call counts ≥ 1"),
    (["--student_loss=l1"], "allowed: mse, huber"),
    (["--t_sampling=beta"], "allowed: schedule, lognormal"),
    (["--teacher_weight=snr"], "--teacher_weight='snr': allowed: auto (the form's), '' (the form's own), eps"),
    (["--student_t=lognormal"], "--student_t='lognormal': allowed: schedule, uniform, late"),
    (["--handover=1"], "--handover=1.0: a fraction of a phase in [0, 1): 0 trains each phase right up to its end"),
    (["--handover=-0.1"], "--handover=-0.1: a fraction of a phase in [0, 1)"),
    (["--grid=cosine"], "--grid='cosine': allowed: logsnr, time_uniform, time_quadratic, edm"),
    (["--sampler=heun"], "--sampler='heun': allowed: dpm++2m, dpm++3m"),
    (["--fid_n=abc"], "argument --fid_n: expected an integer, got 'abc'"),
    (["--out={text}"], "--out='{text}': {text} is a file, not a folder"),
    (["--inception={text}"], "--inception='{text}': {text} is not a TorchScript file"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    text = tmp_path / "notes.md"                      # {text}: a file that is neither a folder nor a network
    text.write_text("a text file, not a network\n")
    flags, message = [f.replace("{text}", str(text)) for f in flags], message.replace("{text}", str(text))
    with pytest.raises(SystemExit) as exit_:
        main(["--preset=smoke", f"--out={tmp_path / 'out'}", *flags])
    said = capsys.readouterr().err
    assert exit_.value.code == 2 and message in said and "python -m rd.cifar: error: " in said, said
    assert not (tmp_path / "out").exists()


def test_fid_of_random_images_is_refused_before_any_work(tmp_path, capsys):
    """A real TorchScript file with --data=random: FID would fail at the eval stage (no CIFAR-10 test split)."""
    net = tmp_path / "net.pt"
    torch.jit.script(torch.nn.Identity()).save(str(net))
    with pytest.raises(SystemExit) as exit_:
        main(["--preset=smoke", f"--out={tmp_path / 'out'}", f"--inception={net}"])
    assert exit_.value.code == 2 and "which --data=random has not: pass --inception=''" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_bad_flag_is_said_once_before_any_work(tmp_path, capsys):
    """Two bad flags: both said; a flag refused is not blamed again through the checks that depend on it (--phases=-1
    and rd2, or --pair_steps); a bad --stages still lets the flags of every stage be checked (--inception)."""
    for flags, said in [
            (["--grid=cosine", "--batch=0"], ["--batch=0: must be ≥ 1", "--grid='cosine': allowed: logsnr"]),
            (["--phases=-1", "--students=rd,rd2"], ["--phases=-1: must be ≥ 1"]),
            (["--pair_steps=0", "--phases=2", "--students=rd"], ["--pair_steps=0: must be ≥ 1"]),
            (["--data=.", "--fid_n=0", "--inception=/nonexistent.pt"], ["--fid_n=0: must be ≥ 1",
                                                                       "--inception='/nonexistent.pt': no such file"]),
            (["--stages=bogus", "--inception=/nonexistent.pt"], ["--stages='bogus': use 'all'",
                                                                 "--inception='/nonexistent.pt': no such file"])]:
        with pytest.raises(SystemExit) as exit_:
            main(["--preset=smoke", f"--out={tmp_path / 'out'}", *flags])
        lines = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and all(line.startswith("python -m rd.cifar: error: --") for line in lines), lines
        assert [any(part in line for line in lines) for part in said] == [True] * len(said), (flags, lines)
        assert len(lines) == len(said) + ("--stages=bogus" in flags), (flags, lines)   # + the random-data FID line
        assert not (tmp_path / "out").exists()
