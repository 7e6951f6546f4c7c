"""Course assignments carved from the library: the solution blocks are marked in place, a student copy blanks them.

    python -m rd.assignments list                        # the assignments, their tasks and where they are
    python -m rd.assignments student A2 ../rd-A2         # a copy of the repo in which A2's solutions are removed
    python -m pytest -m a2 ../rd-A2/tests                # the student's checks (they fail until A2 is done)

A solution block is a run of lines between two markers in a Python file of rd/ (one source of truth: the library
itself is the solution):

    # BEGIN ASSIGNMENT A2.1: the first-order DPM-Solver step in both forms — see [DPM] eq. (3.7), [DPM++] eq. (9)
    ...                                                    # the solution
    # END ASSIGNMENT

The student copy replaces each block of the chosen assignment by one line at the block's indentation,

    raise NotImplementedError("A2.1: the first-order DPM-Solver step ... — handout: tutorials/assignments/A2.md; tests: pytest -m a2")

and keeps every other file, and every other assignment's solutions, as they are. The handouts are
tutorials/assignments/A1.md … A4.md; the assignment tests carry the pytest markers a1 … a4 (tests/conftest.py).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = {
    "A1": "schedules and prediction-type conversions",
    "A2": "DPM-Solver steps: first, second and third order, noise and data forms",
    "A3": "pair generation and one rectification round on 2D data, with the first-order diagnostic",
    "A4": "the fused GroupNorm + SiLU kernel against its reference: the backward formula",
}
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN ASSIGNMENT (?P<id>A(?P<n>\d+)\.\d+): (?P<task>.+?)\s*$")
END = re.compile(r"^[ \t]*# END ASSIGNMENT\s*$")
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", "build", "data", "runs", "out"}


@dataclass
class Block:
    """One marked solution: lines [start, end] of `path` (0-based, markers included)."""
    path: Path
    start: int
    end: int
    id: str             # "A2.1"
    task: str           # what to implement (the text after the id)
    indent: str

    @property
    def assignment(self) -> str:
        return self.id.split(".")[0]


def find_blocks(path: Path) -> list[Block]:
    """The marked blocks of one file; a clear error for an unclosed, nested, empty or stray marker."""
    lines, blocks, open_ = path.read_text().splitlines(), [], None
    for i, line in enumerate(lines):
        if m := BEGIN.match(line):
            if open_ is not None:
                raise ValueError(f"{path}:{i + 1}: BEGIN ASSIGNMENT inside {open_[1].group('id')}, opened at line "
                                 f"{open_[0] + 1}: blocks do not nest")
            if m.group("id").split(".")[0] not in ASSIGNMENTS:
                raise ValueError(f"{path}:{i + 1}: unknown assignment {m.group('id')}; known: {', '.join(ASSIGNMENTS)}")
            open_ = (i, m)
        elif END.match(line):
            if open_ is None:
                raise ValueError(f"{path}:{i + 1}: END ASSIGNMENT without a BEGIN")
            start, m = open_
            if not any(ln.strip() and not ln.strip().startswith("#") for ln in lines[start + 1:i]):
                raise ValueError(f"{path}:{start + 1}: {m.group('id')} holds no code")
            blocks.append(Block(path, start, i, m.group("id"), m.group("task"), m.group("indent")))
            open_ = None
        elif line.lstrip().startswith("# END ASSIGNMENT"):
            raise ValueError(f"{path}:{i + 1}: malformed marker {line.strip()!r}; an end marker is exactly "
                             f"'# END ASSIGNMENT'")
        elif "ASSIGNMENT" in line and line.lstrip().startswith("# BEGIN"):
            raise ValueError(f"{path}:{i + 1}: malformed marker {line.strip()!r}; the form is "
                             f"'# BEGIN ASSIGNMENT A<n>.<k>: <what to implement>'")
    if open_ is not None:
        raise ValueError(f"{path}:{open_[0] + 1}: {open_[1].group('id')} is never closed by '# END ASSIGNMENT'")
    return blocks


def all_blocks(root: Path = ROOT, complete: bool = True) -> list[Block]:
    """Every block under root/rd, checked: ids unique and (complete=True) every assignment has at least one."""
    blocks = [b for path in sorted((root / "rd").rglob("*.py")) if path.name != "assignments.py"   # (its docstring)
              for b in find_blocks(path)]
    seen = {}
    for b in blocks:
        if b.id in seen:
            raise ValueError(f"{b.id} is marked twice: {seen[b.id]} and {b.path}:{b.start + 1}")
        seen[b.id] = f"{b.path}:{b.start + 1}"
    blocks.sort(key=lambda b: tuple(int(v) for v in b.id[1:].split(".")))              # A1.1, A1.2, …, A2.1
    missing = set(ASSIGNMENTS) - {b.assignment for b in blocks}
    if missing and complete:
        raise ValueError(f"no blocks marked for {', '.join(sorted(missing))}")
    return blocks


def stub(block: Block) -> str:
    """The line that replaces a block in the student copy."""
    n = block.assignment[1:]
    message = (f"{block.id}: {block.task} — handout: tutorials/assignments/{block.assignment}.md; "
               f"tests: pytest -m a{n}")
    return f"{block.indent}raise NotImplementedError({json.dumps(message, ensure_ascii=False)})"   # a Python literal


def blank(text: str, blocks: list[Block]) -> str:
    """text with each block (markers included) replaced by its stub, blocks in file order."""
    lines = text.splitlines()
    for b in sorted(blocks, key=lambda b: b.start, reverse=True):
        lines[b.start:b.end + 1] = [stub(b)]
    return "\n".join(lines) + "\n"


def repo_files(root: Path) -> list[Path]:
    """The files a clone holds: `git ls-files` (tracked and untracked-but-not-ignored), else a walk that skips
    data, runs, builds and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        return [root / f for f in out.splitlines() if (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in root.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts)]


def student_copy(assignment: str, dest, root: Path = ROOT) -> list[Block]:
    """Write the student copy of `assignment` (e.g. "A2") to dest (which must not exist); returns its blocks."""
    assignment = assignment.upper()
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; known: {', '.join(ASSIGNMENTS)}")
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; choose a new folder (nothing was overwritten)")
    blocks = [b for b in all_blocks(root) if b.assignment == assignment]
    by_file = {}
    for b in blocks:
        by_file.setdefault(b.path, []).append(b)
    for src in repo_files(root):
        target = dest / src.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src in by_file:
            target.write_text(blank(src.read_text(), by_file[src]))
        else:
            shutil.copy2(src, target)
    return blocks


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rd.assignments", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the assignments and their marked tasks")
    s = sub.add_parser("student", help="write a student copy with one assignment's solutions removed")
    s.add_argument("assignment", help="A1, A2, A3 or A4")
    s.add_argument("dest", help="a new folder for the copy")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            blocks = all_blocks()
            for a, title in ASSIGNMENTS.items():
                print(f"{a}: {title}  (handout tutorials/assignments/{a}.md, tests: pytest -m a{a[1:]})")
                for b in blocks:
                    if b.assignment == a:
                        print(f"    {b.id} {b.path.relative_to(ROOT)}:{b.start + 1}  {b.task}")
        else:
            blocks = student_copy(args.assignment, args.dest)
            print(f"student copy of {args.assignment.upper()} in {args.dest}: {len(blocks)} blocks replaced "
                  f"({', '.join(b.id for b in blocks)}); check with: cd {args.dest} && python -m pytest -m "
                  f"a{args.assignment[1:]} tests; `python -m pip install --no-deps -e .` there makes the tutorials "
                  "import the copy's rd")
    except (ValueError, FileExistsError) as err:
        sys.exit(f"rd.assignments: {err}")


if __name__ == "__main__":
    main()
