"""rd.timing: the benchmarks' medians of short calls."""
import pytest

import rd.timing
from rd.timing import timeit


def test_timeit_is_the_median_after_the_warm_up_calls(monkeypatch):
    calls = []
    clock = iter([0.0, 0.5, 1.0, 1.1, 2.0, 2.3])                      # three timed calls: 0.5, 0.1, 0.3 s
    monkeypatch.setattr(rd.timing.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(rd.timing.time, "perf_counter", lambda: next(clock))
    assert timeit(lambda: calls.append(1), iters=3, warmup=2) == pytest.approx(0.3)
    assert len(calls) == 5, "2 warm-up calls, then 3 timed ones"
