"""rd.cli: a dataclass's fields as --flags, presets as named keyword sets, unknown flags refused."""
import dataclasses

import pytest

from rd.cifar import PRESETS, CifarConfig
from rd.cli import FlagChecks, arg, parse


def test_cli_presets_and_overrides():
    cfg = parse(CifarConfig, ["--preset=smoke", "--batch=4", "--compile=true"], "", presets=PRESETS)
    assert cfg.batch == 4 and cfg.compile and cfg.unet == "tiny" and cfg.data == "random"
    assert parse(CifarConfig, [], "", presets=PRESETS) == CifarConfig()


def test_cli_keeps_a_field_named_preset_when_there_are_no_presets():
    import dataclasses
    from rd.cli import arg

    @dataclasses.dataclass
    class Args:
        preset: str = arg("auto", "a field that happens to be called preset")
    assert parse(Args, ["--preset=gpu"], "").preset == "gpu"


def test_a_field_named_preset_holds_the_chosen_preset_and_its_default_is_used_without_the_flag(capsys):
    @dataclasses.dataclass
    class Args:
        preset: str = arg("small", "sizes")
        steps: int = arg(1000, "optimiser steps")
        lr: float = arg(1e-3, "learning rate")
    presets = {"small": {"steps": 10}, "large": {"steps": 10_000, "lr": 1e-4}}
    assert parse(Args, [], "", presets=presets) == Args("small", 10, 1e-3), "no --preset: the field's default preset"
    assert parse(Args, ["--preset=large", "--lr=0.5"], "", presets=presets) == Args("large", 10_000, 0.5)
    with pytest.raises(SystemExit):
        parse(Args, ["--preset=huge"], "", presets=presets)
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(Args, ["--help"], "", presets=presets)
    text = " ".join(capsys.readouterr().out.split())
    assert "sizes: small: steps=10; large: steps=10000, lr=0.0001 (default: small)" in text, text


@pytest.mark.parametrize("flag", ["--fid=5", "--pair_s=3", "--bogus=1"])
def test_unknown_flags_and_prefixes_of_flags_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as err:
        parse(CifarConfig, [flag], "", presets=PRESETS)
    assert err.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err
    assert parse(CifarConfig, ["--fid_n=5", "--pair_steps=3"], "", presets=PRESETS).fid_n == 5   # whole names work


def test_flag_checks_say_every_bad_flag_with_its_value_and_exit_2(capsys):
    @dataclasses.dataclass
    class Config:
        grid: str = "edm"
        steps: int = 0
        lr: float = float("nan")
        batch: int = 8

    checks = FlagChecks("prog", Config())
    checks.one_of("grid", ("logsnr", "edm"))
    checks.at_least(1, "batch")
    checks.done()                                             # nothing wrong yet: no exit, nothing said
    assert capsys.readouterr().err == ""
    checks.one_of("grid", ("logsnr",))
    checks.one_of("grid", ("logsnr",), "the λ-uniform grid only")
    checks.at_least(1, "steps", "lr", "batch")                # NaN is not ≥ 1
    with pytest.raises(SystemExit) as stop:
        checks.done()
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "prog: error: --grid='edm': allowed: logsnr", "prog: error: --grid='edm': the λ-uniform grid only",
        "prog: error: --steps=0: must be ≥ 1", "prog: error: --lr=nan: must be ≥ 1"]
