"""The assignment tool, and the CI check of every student copy: it fails exactly its own tests (-m a<n>: marked in
the test files, or listed in assignment_reach.json because they reach its blocks through the library), each with
the NotImplementedError of one of its blanked blocks, and passes every other test. The repo itself passing
everything is the rest of this suite. `RD_UPDATE_REACH=1` rewrites assignment_reach.json from what the tests reach.

Which blocks each test reaches is measured while the suite runs (tests/conftest.py traces the lines between the
markers in the test's thread; this file runs last). A test that reaches none of an assignment's blocks runs the
same code in that assignment's copy as in the repo, so it is inferred to pass there as it passes here (what the
trace cannot see: other threads, subprocesses); the markers must therefore equal the measured reach, and only the
marked tests are run in the copies, where each must stop at a blank block. Skipped tests (the GPU tests on a CPU)
are left out of the comparison: what they reach is unknown here. The end-to-end runs (END_TO_END: tutorials,
train_sd.py, rd.bench, torchrun) are left out too: they reach nearly every block, much of it in subprocesses, and the
repo's own run covers them. After RD_UPDATE_REACH=1 run the check again: its copies ran with the old markers."""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import END_TO_END, MARKERS
from rd.assignments import ASSIGNMENTS, all_blocks, blank, find_blocks, main, student_copy

ROOT = Path(__file__).resolve().parents[1]
REACH = ROOT / "tests" / "assignment_reach.json"         # tests that reach an assignment's blocks through the library
IN_A_COPY = os.environ.get("RD_STUDENT_COPY")         # set while this check runs the suite inside a student copy
pytestmark = pytest.mark.skipif(bool(IN_A_COPY), reason="checks the repo, not a student copy")


def write(tmp_path, text):
    path = tmp_path / "m.py"
    path.write_text(text)
    return path


def test_every_assignment_has_blocks_with_unique_ids():
    blocks = all_blocks()
    assert {b.assignment for b in blocks} == set(ASSIGNMENTS)
    assert len({b.id for b in blocks}) == len(blocks) >= 12


def test_blank_replaces_a_block_by_one_raise_at_its_indentation(tmp_path):
    path = write(tmp_path, "def f(x):\n    y = 1\n    # BEGIN ASSIGNMENT A2.7: add one — see nothing\n"
                           "    y = x + 1\n    # END ASSIGNMENT\n    return y\n")
    (block,) = find_blocks(path)
    assert (block.id, block.task, block.start, block.end, block.indent) == ("A2.7", "add one — see nothing", 2, 4, "    ")
    text = blank(path.read_text(), [block])
    assert text.splitlines()[2] == ('    raise NotImplementedError("A2.7: add one — see nothing — handout: '
                                    'tutorials/assignments/A2.md; tests: pytest -m a2")')
    namespace = {}
    exec(compile(text, "m.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"^A2\.7: add one"):
        namespace["f"](1)


@pytest.mark.parametrize("text,error", [
    ("# BEGIN ASSIGNMENT A1.1: x\nx = 1\n", "never closed"),
    ("x = 1\n# END ASSIGNMENT\n", "END ASSIGNMENT without a BEGIN"),
    ("# BEGIN ASSIGNMENT A1.1: x\n# BEGIN ASSIGNMENT A1.2: y\nx = 1\n# END ASSIGNMENT\n", "do not nest"),
    ("# BEGIN ASSIGNMENT A1.1: x\n# only a comment\n# END ASSIGNMENT\n", "holds no code"),
    ("# BEGIN ASSIGNMENT A9.1: x\nx = 1\n# END ASSIGNMENT\n", "unknown assignment A9.1"),
    ("# BEGIN ASSIGNMENT 1.1 x\nx = 1\n# END ASSIGNMENT\n", "malformed marker"),
    ("# BEGIN ASSIGNMENT A1.1: x\nx = 1\n# END ASSIGNMENT A1.1\n", "an end marker is exactly"),
])
def test_bad_markers_are_refused_with_the_place(tmp_path, text, error):
    with pytest.raises(ValueError, match=error) as info:
        find_blocks(write(tmp_path, text))
    assert "m.py:" in str(info.value)


def test_student_copy_blanks_only_its_assignment_and_never_overwrites(tmp_path, capsys):
    main(["student", "a3", str(tmp_path / "s")])
    assert "4 blocks replaced (A3.1, A3.2, A3.3, A3.4)" in capsys.readouterr().out
    copy = (tmp_path / "s" / "rd" / "rectify.py").read_text()
    assert 'raise NotImplementedError("A3.1: ' in copy and "BEGIN ASSIGNMENT A3" not in copy
    assert "BEGIN ASSIGNMENT A2.1" in (tmp_path / "s" / "rd" / "solvers.py").read_text(), "other solutions stay"
    for f in ("README.md", "train_sd.py", "tests/test_solvers.py", "tutorials/assignments/A3.md"):
        assert (tmp_path / "s" / f).is_file(), f
    left = {b.assignment for b in all_blocks(tmp_path / "s", complete=False)}
    assert left == set(ASSIGNMENTS) - {"A3"}, "the copy keeps the other assignments' blocks, not A3's"
    with pytest.raises(SystemExit, match="exists; choose a new folder"):
        main(["student", "A3", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="unknown assignment 'A7'"):
        main(["student", "A7", str(tmp_path / "t")])


def test_handouts_exist_and_name_their_tasks():
    for a in ASSIGNMENTS:
        text = (ROOT / "tutorials" / "assignments" / f"{a}.md").read_text()
        for b in all_blocks():
            if b.assignment == a:
                assert b.id in text, f"{a}.md does not mention {b.id}"
        assert f"pytest -m a{a[1:]}" in text and "Stretch" in text


# ---------------------------------------------------------------------------------------------------------------

def marked_tests(marker: str, reach: bool = True) -> set[str]:
    """Node ids of the tests selected by -m marker (reach=False: by the markers in the test files alone)."""
    env = dict(os.environ) | ({} if reach else {"RD_NO_REACH": "1"})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                          marker, *(f"--ignore=tests/{f}" for f in END_TO_END), "tests"], cwd=ROOT,
                         capture_output=True, text=True, env=env).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def junit_results(path: Path) -> dict[str, tuple[str, str]]:
    """node id → (passed | failed | skipped, failure text)."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        node = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            results[node] = ("failed", (bad.get("message") or "") + "\n" + (bad.text or ""))
        else:
            results[node] = ("skipped" if case.find("skipped") is not None else "passed", "")
    return results


def run_in_parallel(jobs: dict, base: Path) -> dict[str, dict]:
    """jobs: name → (copy folder, pytest arguments); two pytest processes at a time (CI has two cores).
    Returns name → junit_results of its run."""
    env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    todo, running, results = list(jobs), {}, {}
    deadline = time.monotonic() + 1800
    try:
        while todo or running:
            while todo and len(running) < 2:
                name = todo.pop(0)
                folder, args = jobs[name]
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line",   # (the junit
                       f"--junitxml={base / name}.xml",                                 # message keeps the error)
                       f"--basetemp={base / name}-tmp", *args]
                running[name] = subprocess.Popen(cmd, cwd=folder, env=env | {"RD_STUDENT_COPY": folder.name},
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    results[name] = junit_results(base / f"{name}.xml")
                    del running[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"the student copies {sorted(running)} ran for more than 30 minutes")
            time.sleep(0.5)
    finally:
        for proc in running.values():                        # nothing left running after a failure
            proc.kill()
    return results


def checked_files() -> list[str]:
    return sorted(f"tests/{f.name}" for f in (ROOT / "tests").glob("test_*.py") if f.name not in END_TO_END)


@pytest.fixture(scope="module")
def reach_and_markers(request, tmp_path_factory):
    """({node id: block ids it reaches}, {marker: node ids it selects}, skipped node ids) for every test outside
    END_TO_END: as measured while this session ran them all, or else (this file run alone, or with -k) by a run of
    those files now."""
    from conftest import node_id
    files = checked_files()
    items = [item for item in request.session.items if node_id(item).split("::")[0] in files]
    measured = request.config.rd_reach
    if {node_id(item).split("::")[0] for item in items} == set(files) and not request.config.rd_deselected \
            and all(node_id(item) in measured for item in items):
        reach = {node_id(item): set(measured[node_id(item)]) for item in items}
        markers = {m: {node_id(item) for item in items if item.get_closest_marker(m)} for m in MARKERS}
        return reach, markers, set(request.config.rd_skipped)
    out = tmp_path_factory.mktemp("reach") / "reach.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          env=dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg", RD_REACH_OUT=str(out)),
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not out.exists():       # 1: some tests failed, the rest is measured
        pytest.fail(f"measuring what the tests reach failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    measured = json.loads(out.read_text())
    reach = {node: set(ids) for node, ids in measured["reach"].items()}
    markers = {m: marked_tests(m) for m in MARKERS}
    unmeasured = set().union(*markers.values()) - set(reach)
    assert not unmeasured, f"marked tests the run did not measure: {sorted(unmeasured)[:10]}"
    return reach, markers, set(measured["skipped"])


@pytest.fixture(scope="module")
def student_runs(reach_and_markers, tmp_path_factory):
    """Each assignment's student copy running its own marked tests: node id → (outcome, failure text)."""
    base = tmp_path_factory.mktemp("students")
    jobs = {}
    for a in ASSIGNMENTS:
        copy = base / a
        student_copy(a, copy)
        jobs[a] = (copy, ["-m", f"a{a[1:]}", *checked_files()])
    return run_in_parallel(jobs, base)


@pytest.mark.parametrize("assignment", list(ASSIGNMENTS))
def test_student_copy_fails_exactly_its_own_tests_with_not_implemented(reach_and_markers, student_runs, assignment):
    reach, markers, skipped = reach_and_markers
    marker, blanked = f"a{assignment[1:]}", f"NotImplementedError: {assignment}."
    reaching = {node for node, ids in reach.items() if any(i.split(".")[0] == assignment for i in ids)} - skipped
    own, results = markers[marker] - skipped, student_runs[assignment]
    if os.environ.get("RD_UPDATE_REACH"):                 # the file lists what reaches and is not marked in the tests
        direct = marked_tests(marker, reach=False)
        table = json.loads(REACH.read_text()) if REACH.exists() else {}
        kept = set(table.get(marker, ())) & skipped                   # entries this machine cannot measure stay
        table[marker] = sorted((reaching - direct) | kept)
        REACH.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
        own = (direct | reaching) - skipped
    assert own, f"no tests carry the marker {marker}"
    problems = [f"{node}: reaches a block of {assignment} but is not marked {marker}: list it in {REACH.name} "
                f"(RD_UPDATE_REACH=1 rewrites the file)" for node in sorted(reaching - own)]
    problems += [f"{node}: marked {marker} but reaches no block of {assignment} (listed in {REACH.name}? "
                 f"RD_UPDATE_REACH=1 rewrites the file)" for node in sorted(own - reaching)]
    for node in sorted(markers[marker] & reaching):       # (the markers the copies ran with)
        outcome, text = results.get(node, ("missing", ""))
        if outcome != "failed" or blanked not in text:
            problems.append(f"{node}: reaches a block of {assignment} but {outcome} in its student copy"
                            + ("" if outcome != "failed" else f" with another error: {text[:200]!r}"))
    assert not problems, f"{assignment}: {len(problems)} problems\n" + "\n".join(problems[:20])
    print(f"{assignment}: its {len(own)} tests fail with NotImplementedError; the other {len(reach) - len(own)} "
          f"reach none of its blocks")
