"""Markers of the course assignments: `python -m pytest -m a2 tests` runs A2's checks (rd/assignments.py)."""

MARKERS = {
    "a1": "A1, schedules and prediction-type conversions (tutorials/assignments/A1.md)",
    "a2": "A2, DPM-Solver steps (tutorials/assignments/A2.md)",
    "a3": "A3, pair generation, rectification and the first-order diagnostic (tutorials/assignments/A3.md)",
    "a4": "A4, the fused GroupNorm + SiLU backward formula (tutorials/assignments/A4.md)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
