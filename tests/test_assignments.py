"""The assignment tool, and the CI check of every student copy: in each copy, every test of its marker (-m a<n>:
marked in the test files, or listed in assignment_reach.json because it reaches the assignment's blocks through the
library) fails with the NotImplementedError of one of its blanked blocks. That the markers equal what the tests reach
is checked by tests/conftest.py at the end of a session that ran every checked file (it traces the lines between the
markers in each test's thread): a test that reaches none of an assignment's blocks runs the same code in that
assignment's copy as in the repo, so it passes there as it passes here, and only the marked tests run in the copies.
The end-to-end runs (files marked e2e: tutorials, pipelines, rd.bench, torchrun) are left out of both: they reach nearly
every block, much of it in subprocesses, and the repo's own run covers them."""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import CHECKED
from rd.assignments import ASSIGNMENTS, all_blocks, blank, find_blocks, main, student_copy

ROOT = Path(__file__).resolve().parents[1]
REACH = ROOT / "tests" / "assignment_reach.json"         # tests that reach an assignment's blocks through the library
IN_A_COPY = os.environ.get("RD_STUDENT_COPY")         # set while this check runs the suite inside a student copy
pytestmark = [pytest.mark.e2e,                 # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)
              pytest.mark.skipif(bool(IN_A_COPY), reason="checks the repo, not a student copy")]


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


def test_the_session_check_names_unmarked_and_unreaching_tests(monkeypatch, tmp_path):
    """tests/conftest.py's comparison of the markers with the measured reach, on a made-up measurement and list."""
    import conftest
    monkeypatch.delenv("RD_UPDATE_REACH", raising=False)
    listed = tmp_path / "assignment_reach.json"
    monkeypatch.setattr(conftest, "REACH", listed)
    listed.write_text(json.dumps({"a1": ["tests/t.py::c", "tests/t.py::gone"]}))
    reach = {"tests/t.py::a": ["A2.1"], "tests/t.py::b": [], "tests/t.py::c": ["A1.2"], "tests/t.py::gpu": []}
    markers = {"tests/t.py::a": ([], []), "tests/t.py::b": (["a3"], ["a3"]),      # node id → (in its file, in all)
               "tests/t.py::c": ([], ["a1"]), "tests/t.py::gpu": (["a4"], ["a4"])}
    assert conftest.reach_problems(reach, markers, skipped={"tests/t.py::gpu"}) == [
        "tests/t.py::gone: listed for a1 in assignment_reach.json, but there is no such test",
        "tests/t.py::a: reaches a block of A2 but is not marked a2: list it in assignment_reach.json",
        "tests/t.py::b: marked a3 but reaches no block of A3"]
    listed.write_text(json.dumps({"a1": ["tests/t.py::c"]}))
    assert conftest.reach_problems({**reach, "tests/t.py::a": []}, {**markers, "tests/t.py::b": ([], [])},
                                   {"tests/t.py::gpu"}) == []


# ---------------------------------------------------------------------------------------------------------------

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
                # the junit message keeps the error; only the exception's type is checked, so no assert rewriting
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "--assert=plain",
                       f"--junitxml={base / name}.xml", f"--basetemp={base / name}-tmp", *args]
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


@pytest.fixture(scope="module")
def student_runs(tmp_path_factory):
    """Each assignment's student copy running its own marked tests: node id → (outcome, failure text)."""
    base = tmp_path_factory.mktemp("students")
    jobs = {}
    for a in ASSIGNMENTS:
        copy = base / a
        student_copy(a, copy)
        jobs[a] = (copy, ["-m", f"a{a[1:]}", *marked_files(f"a{a[1:]}")])
    return run_in_parallel(jobs, base)


def marked_files(marker: str) -> list[str]:
    """The checked test files that hold a test of `marker`: marked in the file, or listed in assignment_reach.json
    (the copies collect only these)."""
    listed = {node.split("::")[0] for node in json.loads(REACH.read_text()).get(marker, [])}
    return [f for f in CHECKED if f in listed or f"mark.{marker}" in (ROOT / f).read_text()]


@pytest.mark.parametrize("assignment", list(ASSIGNMENTS))
def test_student_copy_fails_exactly_its_own_tests_with_not_implemented(student_runs, assignment):
    marker, blanked, results = f"a{assignment[1:]}", f"NotImplementedError: {assignment}.", student_runs[assignment]
    assert results, f"no tests carry the marker {marker}"
    problems = [f"{node}: marked {marker} but {outcome} in its student copy"
                + (f" with another error: {text[:200]!r}" if outcome == "failed" else
                   f": it reaches no block of {assignment} (remove the marker, or its line in {REACH.name})")
                for node, (outcome, text) in sorted(results.items())
                if outcome != "skipped" and (outcome != "failed" or blanked not in text)]    # skipped: no GPU here
    assert not problems, f"{assignment}: {len(problems)} problems\n" + "\n".join(problems[:20])
    print(f"{assignment}: its {len(results)} tests fail with NotImplementedError in its student copy")
