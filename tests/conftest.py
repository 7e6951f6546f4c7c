"""Markers of the course assignments: `python -m pytest -m a2 tests` runs A2's checks (rd/assignments.py): the tests
marked in the test files, and those listed in assignment_reach.json, which reach the assignment's code through the
library (a sampler needs the solver steps).

Which tests reach which blocks is measured, not kept by hand: while the suite runs, a trace function records every
line executed inside a marked block (`# BEGIN ASSIGNMENT` … `# END ASSIGNMENT`) by each test, its fixtures included,
into `config.rd_reach` (node id → block ids), skipped tests into `config.rd_skipped`. At the end of a session that
ran every checked file (all but END_TO_END, no -k or -m), the markers are compared with that measurement: a test that
reaches an assignment's block must carry its marker, a marked test must reach one, and assignment_reach.json may list
only tests that exist; a difference fails the session and is listed in the summary. With `-n 2` (pytest-xdist) each worker measures its tests and the controller compares.
The trace follows the test's own thread only. `RD_UPDATE_REACH=1` rewrites assignment_reach.json from the
measurement instead of comparing; `RD_REACH_OUT=<file>` writes the measurement to a JSON file."""
import json
import os
import re
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


# the end-to-end runs (whole pipelines and tutorials in subprocesses, torchrun, the student copies): the files that mark
# themselves e2e (`pytestmark = pytest.mark.e2e`), so that `python -m pytest -m "not e2e" tests` is the quick run
E2E_FILE = re.compile(r"^pytestmark = .*pytest\.mark\.e2e\b", re.MULTILINE)
END_TO_END = tuple(sorted(f.name for f in Path(__file__).parent.glob("test_*.py")
                          if E2E_FILE.search(f.read_text(encoding="utf-8"))))
# the files whose markers are compared with the measured reach
CHECKED = sorted(f"tests/{f.name}" for f in Path(__file__).parent.glob("test_*.py") if f.name not in END_TO_END)
# the longest files first: with -n 2 (--dist=loadscope, pyproject.toml) each goes whole to one worker, and the two
# workers finish together
LONGEST = ("test_train_sd.py", "test_solvers.py", "test_cifar.py", "test_assignments.py", "test_tutorials.py")

if os.environ.get("PYTEST_XDIST_WORKER"):           # -n N: the cores shared among the workers and the runs they start
    import torch
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def node_id(item) -> str:
    """The test's node id as seen from the repo root, wherever pytest was started."""
    return f"{Path(item.path).resolve().relative_to(ROOT).as_posix()}::{item.nodeid.split('::', 1)[1]}"


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.addinivalue_line("markers", "e2e: an end-to-end run (its file's pytestmark); -m 'not e2e' skips them")
    config.rd_reach, config.rd_skipped, config.rd_deselected = {}, set(), False
    config.rd_markers, config.rd_complete, config.rd_problems = {}, False, None


def pytest_deselected(items):
    if items:
        items[0].config.rd_deselected = True


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else len(LONGEST))
    for item in items:
        if bool(item.get_closest_marker("e2e")) != (item.path.name in END_TO_END):
            raise pytest.UsageError(f"{item.nodeid}: mark an end-to-end file on one line, `pytestmark = "
                                    "pytest.mark.e2e` or `pytestmark = [pytest.mark.e2e, ...]` (tests/conftest.py "
                                    "reads it to leave the file out of the reach measurement)")
        item.rd_direct = [m for m in MARKERS if item.get_closest_marker(m)]             # the markers in the files
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
    barriers on a shared 2-core machine make their training steps far slower. Restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tf32_as_it_was():
    """TF32 restored after each test (`pytestmark = pytest.mark.usefixtures("tf32_as_it_was")`): rd.cifar and
    train_sd.py turn it on for their process, and a run inside the test process must not leave it on for later tests."""
    from helpers import tf32_kept
    with tf32_kept():
        yield


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


_TRACER = None if os.environ.get("RD_STUDENT_COPY") else _tracer()      # a student copy's run is not measured
_FIXTURE_REACH = {}                                              # FixtureDef → blocks its last setup reached


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _TRACER is None:
        yield
        return
    if sys.gettrace() is not None or item.path.name in END_TO_END:   # a debugger or coverage holds the hook, or an
        yield                                                        # end-to-end run: this test goes unmeasured
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


# -- the markers against the reach, at the end of the session -------------------------------------------------------

def pytest_collection_finish(session):
    """Whether this session runs every checked file whole, and each checked test's markers (in its file, in all)."""
    config = session.config
    checked = [item for item in session.items if node_id(item).split("::")[0] in CHECKED]
    config.rd_complete = {node_id(item).split("::")[0] for item in checked} == set(CHECKED) and not config.rd_deselected
    config.rd_markers = {node_id(item): (item.rd_direct, [m for m in MARKERS if item.get_closest_marker(m)])
                         for item in checked}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """(xdist controller) A worker's measurement joins the others'; a worker lost on the way makes it incomplete."""
    config, part = node.config, getattr(node, "workeroutput", {}).get("rd_reach")
    if part is None:
        config.rd_markers, config.rd_complete = {}, None
        return
    part = json.loads(part)
    config.rd_reach.update(part["reach"])
    config.rd_skipped |= set(part["skipped"])
    if config.rd_complete is not None:
        config.rd_markers, config.rd_complete = part["markers"], part["complete"]


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workerinput"):                           # an xdist worker: its part goes to the controller
        config.workeroutput["rd_reach"] = json.dumps({"reach": config.rd_reach, "skipped": sorted(config.rd_skipped),
                                                      "complete": config.rd_complete, "markers": config.rd_markers})
        return
    if out := os.environ.get("RD_REACH_OUT"):
        Path(out).write_text(json.dumps({"reach": config.rd_reach, "skipped": sorted(config.rd_skipped)}, indent=0))
    if config.rd_complete and _TRACER is not None and all(node in config.rd_reach for node in config.rd_markers):
        config.rd_problems = reach_problems(config.rd_reach, config.rd_markers, config.rd_skipped)
        if config.rd_problems and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def reach_problems(reach: dict, markers: dict, skipped: set) -> list[str]:
    """What differs between the markers (node id → (in its file, in all)) and the measured reach (node id → block
    ids), skipped tests left out (what a GPU test reaches is unknown on a CPU), and entries of REACH for tests that no
    longer exist; with RD_UPDATE_REACH, rewrite REACH to the measurement instead (its entries for tests skipped here
    stay)."""
    old = json.loads(REACH.read_text()) if REACH.exists() else {}
    problems, table = [], {}
    for marker in MARKERS:
        assignment = f"A{marker[1:]}"
        reaching = {node for node in markers if any(i.split(".")[0] == assignment for i in reach[node])} - skipped
        own = {node for node, (_, every) in markers.items() if marker in every} - skipped
        direct = {node for node, (in_file, _) in markers.items() if marker in in_file}
        table[marker] = sorted((reaching - direct) | (set(old.get(marker, ())) & skipped))
        problems += [f"{node}: reaches a block of {assignment} but is not marked {marker}: list it in {REACH.name}"
                     for node in sorted(reaching - own)]
        problems += [f"{node}: marked {marker} but reaches no block of {assignment}" for node in sorted(own - reaching)]
        problems += [f"{node}: listed for {marker} in {REACH.name}, but there is no such test"
                     for node in sorted(set(old.get(marker, ())) - set(markers))]
    if os.environ.get("RD_UPDATE_REACH"):
        REACH.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
        return []
    return problems


def pytest_terminal_summary(terminalreporter, config):
    if config.rd_problems:
        terminalreporter.write_sep("=", f"assignment markers: {len(config.rd_problems)} differ from the measured reach",
                                   red=True)
        for line in config.rd_problems[:20]:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"RD_UPDATE_REACH=1 python -m pytest -q -n 2 tests rewrites {REACH.name} from the "
                                    "measurement (tutorials/assignments/README.md)")
    elif config.rd_problems is not None:
        terminalreporter.write_line(f"assignment markers: equal to the measured reach of {len(config.rd_markers)} tests"
                                    + (f" ({REACH.name} rewritten)" if os.environ.get("RD_UPDATE_REACH") else ""))
