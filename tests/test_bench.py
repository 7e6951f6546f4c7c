"""rd.bench runs end to end at smoke size and prints its one table (on a CPU: the reference rows only)."""
import pytest
import torch

from rd.bench import main, norm_calls, table
from rd.unet import UNetConfig

pytestmark = pytest.mark.e2e              # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)


def test_bench_quick_prints_one_table(capsys):
    out = main(["--preset=quick", "--op_layouts=channels_last"])
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(out.rstrip()), "the table comes last"
    lines = out.splitlines()
    assert lines[0].startswith("| part | case | metric | eager | eager+fused |")
    parts = {line.split(" | ")[0].strip("| ") for line in lines[2:]}
    assert parts == {"op fwd+bwd", "train step", "sampling"}
    if not torch.cuda.is_available():
        assert "no CUDA device" in printed and all(line.count("–") >= 4 for line in lines[2:])


def test_norm_calls_cover_every_block():
    """The CIFAR UNet calls group_norm_silu twice per ResBlock plus once at the output (scale/shift in the 2nd)."""
    calls = norm_calls(UNetConfig.preset("cifar"))
    res_blocks = 8 + 2 + 12                      # down 4 levels × 2, middle 2, up 4 levels × 3
    assert sum(calls.values()) == 2 * res_blocks + 1
    assert sum(n for (c, h, w, g, affine), n in calls.items() if affine) == res_blocks


def test_table_ratio_cells():
    text = table([["op fwd+bwd", "x", "µs", 120.0, 40.0, 3.0, None, None, None]])
    assert text.splitlines()[-1] == "| op fwd+bwd | x | µs | 120 | 40 | 3.00 | – | – | – |"


def test_bad_parts_and_unknown_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--parts=op,gpu"])
    assert stop.value.code == 2
    assert ("python -m rd.bench: error: --parts='op,gpu': unknown parts ['gpu']; allowed: op, train, sample"
            in capsys.readouterr().err)
    with pytest.raises(SystemExit) as stop:
        main(["--quick"])                                    # the preset is --preset=quick
    assert stop.value.code == 2
