"""Markers of the course assignments: `python -m pytest -m a2 tests` runs A2's checks (rd/assignments.py): the tests
marked in the test files, and those listed in assignment_reach.json, which reach the assignment's code through the
library (a sampler needs the solver steps).

Which tests reach which blocks is measured, not kept by hand: while the suite runs, a trace function records every
line executed inside a marked block (`# BEGIN ASSIGNMENT` … `# END ASSIGNMENT`) by each test, its fixtures included,
into `config.rd_reach` (node id → block ids), skipped tests into `config.rd_skipped`; tests/test_assignments.py runs
last and checks the markers against it. The trace follows the test's own thread only.
`RD_REACH_OUT=<file>` writes the measurement to a JSON file at the end of the session."""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REACH = Path(__file__).with_name("assignment_reach.json")

MARKERS = {
    "a1": "A1, schedules and prediction-type conversions (tutorials/assignments/A1.md)",
    "a2": "A2, DPM-Solver steps (tutorials/assignments/A2.md)",
    "a3": "A3, pair generation, rectification and the first-order diagnostic (tutorials/assignments/A3.md)",
    "a4": "A4, the fused GroupNorm + SiLU backward formula (tutorials/assignments/A4.md)",
}


# the end-to-end runs (whole pipelines and tutorials in subprocesses, torchrun, the student copies): marked e2e, so that
# `python -m pytest -m "not e2e" tests` is the quick run
END_TO_END = ("test_tutorials.py", "test_cifar.py", "test_train_sd.py", "test_bench.py", "test_dist.py",
              "test_assignments.py")


def node_id(item) -> str:
    """The test's node id as seen from the repo root, wherever pytest was started."""
    return f"{Path(item.path).resolve().relative_to(ROOT).as_posix()}::{item.nodeid.split('::', 1)[1]}"


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.addinivalue_line("markers", "e2e: an end-to-end run (tests/conftest.py, END_TO_END); -m 'not e2e' skips them")
    config.rd_reach, config.rd_skipped, config.rd_deselected = {}, set(), False


def pytest_deselected(items):
    if items:
        items[0].config.rd_deselected = True


def pytest_collection_modifyitems(config, items):
    # the assignment checks last: they read what the other tests reached
    items.sort(key=lambda item: Path(item.path).name == "test_assignments.py")
    for item in items:
        if Path(item.path).name in END_TO_END:
            item.add_marker("e2e")
    if os.environ.get("RD_NO_REACH") or not REACH.exists():          # RD_NO_REACH: the markers in the files only
        return
    reach = {marker: set(nodes) for marker, nodes in json.loads(REACH.read_text()).items()}
    for item in items:
        node = node_id(item)
        for marker, nodes in reach.items():
            if node in nodes:
                item.add_marker(marker)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): OpenMP
    barriers on a shared 2-core machine made their training steps 100× slower. Restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- which blocks each test reaches -----------------------------------------------------------------------------------

class _Tracer:
    """sys.settrace hook: line events only in the files that hold blocks; reached block ids go to the innermost open
    record (a test, or a fixture being set up inside it)."""

    def __init__(self):
        from rd.assignments import all_blocks
        self.blocks = {}                                         # real path → {1-based line: block id}
        for b in all_blocks(ROOT, complete=False):               # (a student copy lacks its assignment's blocks)
            lines = range(b.start + 2, b.end + 1)                # between the markers (b.start, b.end are 0-based)
            self.blocks.setdefault(os.path.realpath(b.path), {}).update(dict.fromkeys(lines, b.id))
        self.files = {}                                          # co_filename → its lines dict, or None
        self.records = []

    def __call__(self, frame, event, arg):
        name = frame.f_code.co_filename
        lines = self.files.get(name, False)
        if lines is False:
            lines = self.files[name] = self.blocks.get(os.path.realpath(name))
        if lines is None:
            return None                                          # no line events in this frame

        def local(frame, event, arg):
            if event == "line" and frame.f_lineno in lines and self.records:
                self.records[-1].add(lines[frame.f_lineno])
            return local
        return local


def _tracer():
    try:
        return _Tracer()
    except ValueError:                       # malformed markers: tests/test_assignments.py names them
        return None


_TRACER = _tracer()
_FIXTURE_REACH = {}                                              # FixtureDef → blocks its last setup reached


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _TRACER is None:
        yield
        return
    if sys.gettrace() is not None:           # a debugger or coverage holds the hook: this test goes unmeasured
        yield
        return
    _TRACER.records.append(set())
    sys.settrace(_TRACER)
    try:
        yield
    finally:
        sys.settrace(None)
        reached = _TRACER.records.pop()
        for name in item.fixturenames:                           # fixtures set up for an earlier test count too
            if fixturedefs := item._fixtureinfo.name2fixturedefs.get(name):
                reached |= _FIXTURE_REACH.get(fixturedefs[-1], set())       # the definition in use
        item.config.rd_reach[node_id(item)] = sorted(reached)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if _TRACER is None or not _TRACER.records:
        yield
        return
    _TRACER.records.append(set())
    try:
        yield
    finally:
        reached = _TRACER.records.pop()
        _FIXTURE_REACH[fixturedef] = reached
        _TRACER.records[-1] |= reached


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped:                       # what a skipped test would reach is unknown here (a GPU test on a CPU)
        item.config.rd_skipped.add(node_id(item))


def pytest_sessionfinish(session):
    if out := os.environ.get("RD_REACH_OUT"):
        Path(out).write_text(json.dumps({"reach": session.config.rd_reach,
                                         "skipped": sorted(session.config.rd_skipped)}, indent=0))
