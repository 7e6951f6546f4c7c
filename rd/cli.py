"""A `--flag=value` command line generated from a config dataclass: one flag per field, its help from the field's
metadata, its default from the field (or from a named preset), unknown flags refused.

    @dataclass
    class Config:
        steps: int = arg(1000, "optimiser steps")

    cfg = parse(Config, None, "what the program does", presets={"tiny": {"steps": 10}})   # None: sys.argv[1:]

What argparse cannot check (a name from a list, a bound, a path) a program checks with FlagChecks before any work,
and every bad flag is said in one format, `prog: error: --flag=value: what to do`, exit status 2 (argparse's).

The tutorials take no flags; their smoke switch is smoke_mode() (RD_SMOKE=1, a run of seconds to minutes).
"""
import argparse
import dataclasses
import os
import sys

from .io import not_a_folder


def arg(default, help: str):
    """A dataclass field with its default and the help text of its flag."""
    return dataclasses.field(default=default, metadata={"help": help})


def smoke_mode() -> bool:
    """RD_SMOKE=1: a tutorial's smoke run; unset, empty or 0: the full run; any other value is refused (exit 1)."""
    value = os.environ.get("RD_SMOKE", "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"RD_SMOKE={value!r}: set RD_SMOKE=1 for the smoke run (seconds to minutes), or unset it "
                         f"for the full run")
    return value == "1"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(kind):
    """int or float from text, refusing NaN and infinities (a NaN budget would silently disable it)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value
    return convert


def parse(cls, argv, description: str, presets: dict | None = None, prog: str | None = None):
    """cls(**flags) from argv (None: sys.argv[1:]); `--preset=NAME` (when presets are given) starts from presets[NAME]
    instead of the field defaults, and explicit flags override it. A field of cls named `preset` then holds NAME: its
    help leads the flag's, and its default names the preset used without --preset. Exits with status 2 and a message
    on a bad or unknown flag (a prefix of a flag is unknown too)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)   # --fid=5 is no --fid_n
    fields = {f.name: f for f in dataclasses.fields(cls)}
    named = fields.pop("preset", None) if presets else None
    if presets:
        listing = "; ".join(f"{k}: {', '.join(f'{f}={v}' for f, v in p.items()) or 'the defaults'}"
                            for k, p in presets.items())
        parser.add_argument("--preset", choices=list(presets), default=named.default if named else None,
                            help=f"{named.metadata.get('help', '')}: {listing} (default: {named.default})" if named
                            else f"start from a named preset: {listing}")
    for f in fields.values():
        kind = {bool: _bool, int: _number(int), float: _number(float)}.get(type(f.default), str)
        parser.add_argument(f"--{f.name}", type=kind, default=None,
                            help=f"{f.metadata.get('help', '')} (default: {f.default})")
    ns = vars(parser.parse_args(argv))
    preset = ns.pop("preset", None) if presets else None
    values = dict(presets[preset]) if preset else {}
    values |= {k: v for k, v in ns.items() if v is not None}
    return cls(**values, **({"preset": preset} if named else {}))


class FlagChecks:
    """A program's checks of its parsed flags, before any work: each failure names the flag, its value and what to do;
    `done()` says them all on stderr as `prog: error: --flag=value: what` and exits with status 2, as argparse does
    for a flag it refuses.

        checks = FlagChecks("python -m rd.cifar", cfg)
        checks.one_of("grid", GRIDS)
        checks.at_least(1, "batch", "pairs")
        checks.done()
    """

    def __init__(self, prog: str, cfg):
        self.prog, self.cfg, self.problems = prog, cfg, []

    def bad(self, flag: str, what: str):
        """The flag is wrong: `what` says why and what to pass instead."""
        self.problems.append(f"--{flag}={getattr(self.cfg, flag)!r}: {what}")

    def one_of(self, flag: str, allowed, what: str = ""):
        """The flag's value must be one of `allowed`; `what` replaces the message that lists them."""
        if getattr(self.cfg, flag) not in allowed:
            self.bad(flag, what or f"allowed: {', '.join(map(str, allowed))}")

    def at_least(self, low, *flags: str):
        """Each flag's value must be ≥ low (a NaN fails too)."""
        for flag in flags:
            if not getattr(self.cfg, flag) >= low:
                self.bad(flag, f"must be ≥ {low}")

    def folder(self, *flags: str):
        """Each flag, when set, must name a folder or nothing yet (it is made), not a file."""
        for flag in flags:
            if getattr(self.cfg, flag) and (file := not_a_folder(getattr(self.cfg, flag))):
                self.bad(flag, f"{file} is a file, not a folder; pass a folder (it is made if missing)")

    def done(self):
        """Exit with status 2 when any check failed, each failure on its own line of stderr; else nothing."""
        if self.problems:
            print("\n".join(f"{self.prog}: error: {problem}" for problem in self.problems), file=sys.stderr)
            raise SystemExit(2)
