"""The Procfile's command lines, for tests and benchmarks that start a process exactly as
`make run` (honcho) starts it: the same pool, the same concurrency, the same defaults.

Only `${NAME:-default}` is expanded (the one form the Procfile uses), from the environment the
process will get; the `.venv/bin/...` programs become this interpreter, so a test runs the
same code as the suite.
"""
from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def procfile_line(name: str, procfile: Path = PROCFILE) -> str:
    """The command of process `name`, as written (KeyError when there is none)."""
    for line in procfile.read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name and not key.startswith("#"):
            return command.strip()
    raise KeyError(f"the Procfile has no {name!r} process")


def procfile_command(name: str, env: Mapping[str, str], procfile: Path = PROCFILE) -> list[str]:
    """The argv of process `name` with `${VAR:-default}` taken from `env` (empty = the default)
    and this interpreter in place of `.venv/bin/celery` and `.venv/bin/python`."""
    expanded = _DEFAULTED.sub(lambda m: env.get(m.group(1)) or m.group(2), procfile_line(name, procfile))
    words = shlex.split(expanded)
    if words[0].endswith("/celery"):
        return [sys.executable, "-m", "celery", *words[1:]]
    if words[0].endswith("/python"):
        return [sys.executable, *words[1:]]
    return words


def option(command: list[str], flag: str) -> str | None:
    """The value given to `flag` in `command` (e.g. "-P" -> "gevent"), or None."""
    for word, value in zip(command, command[1:], strict=False):
        if word == flag:
            return value
    return None
