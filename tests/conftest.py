"""Markers of the course assignments: `python -m pytest -m a2 tests` runs A2's checks (rd/assignments.py): the tests
marked in the test files, and those listed in assignment_reach.json, which reach the assignment's code through the
library (a sampler needs the solver steps) — measured in the student copies by tests/test_assignments.py."""
import json
import os
from pathlib import Path

REACH = Path(__file__).with_name("assignment_reach.json")

MARKERS = {
    "a1": "A1, schedules and prediction-type conversions (tutorials/assignments/A1.md)",
    "a2": "A2, DPM-Solver steps (tutorials/assignments/A2.md)",
    "a3": "A3, pair generation, rectification and the first-order diagnostic (tutorials/assignments/A3.md)",
    "a4": "A4, the fused GroupNorm + SiLU backward formula (tutorials/assignments/A4.md)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RD_NO_REACH") or not REACH.exists():          # RD_NO_REACH: the markers in the files only
        return
    reach = {marker: set(nodes) for marker, nodes in json.loads(REACH.read_text()).items()}
    for item in items:
        # the node id as seen from the repo root, wherever pytest was started
        where = Path(item.path).resolve().relative_to(REACH.parent.parent).as_posix()
        node = f"{where}::{item.nodeid.split('::', 1)[1]}"
        for marker, nodes in reach.items():
            if node in nodes:
                item.add_marker(marker)
