"""What the benchmark scripts share: the processes they start, their isolated databases, the
machine line and the writing of their sections of BENCHMARKS.md.

Not a benchmark itself. The scripts run as ``.venv/bin/python bench/<name>.py`` from the
project root, so this folder is on ``sys.path`` (as ``sys.path[1]`` once a script has put the
project root first) and ``from benchlib import ...`` finds this module. The project itself
(``masscer``) is imported only where a helper needs it, so that a script which configures
Django first (export, pages) is not changed by importing this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

# Benchmarks are development runs (the settings default to production); a script that
# measures the production setup says DJANGO_DEBUG=0 for the processes it starts.
os.environ.setdefault("DJANGO_DEBUG", "1")
# The figures are of generation: the judge pass (#15, on by default for endpoints other than the
# embedded model) would add a call per reply. A benchmark of the judge says MASSCER_JUDGE_DEFAULT=1.
os.environ.setdefault("MASSCER_JUDGE_DEFAULT", "0")

BENCHMARKS_MD = PROJECT_ROOT / "BENCHMARKS.md"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


class BenchError(RuntimeError):
    """The run could not be completed; the message says why."""


# --- processes ------------------------------------------------------------------------------

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Stack:
    """Everything the benchmark starts, so that one `finally` can stop it."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def add(self, name: str, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.processes.append((name, process))
        return process

    def stop(self) -> None:
        """Stop every process, workers first, then the fake they talk to.

        From here on SIGINT, SIGTERM and SIGHUP are ignored: a second Ctrl-C or kill must not cut
        the clean-up short (and orphan the fake or a worker).
        """
        from testing.processes import stop_process

        for number in _SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        for _, process in reversed(self.processes):
            with contextlib.suppress(Exception):
                stop_process(process, timeout=10)
        self.processes.clear()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """Ctrl-C, kill and a closed terminal all end in the same cleanup (even when the shell
    that started us ignores SIGINT, as it does for background jobs)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)


def start_fake(stack: Stack, log: Path, options: list[str]) -> str:
    """Start the fake model server (``--port 0 <options> --model fake-model``); its base URL."""
    command = [
        sys.executable, "-m", "testing.fakellm", "--port", "0", *options, "--model", "fake-model",
    ]  # fmt: skip
    process = stack.add(
        "fake",
        subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115
            start_new_session=True,
        ),
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()  # the server prints its base URL first
    if not line.startswith("http"):
        raise BenchError(f"the fake server did not start: {line!r} (see {log})")
    return line


def wait_for_ready(log: Path, process: subprocess.Popen[bytes], name: str, timeout: float = 60) -> None:
    from testing.processes import wait_worker_ready

    if wait_worker_ready(process, log, timeout=timeout):
        return
    if process.poll() is not None:
        raise BenchError(f"the {name} worker exited with {process.returncode}: {tail(log)}")
    raise BenchError(f"the {name} worker was not ready after {timeout:g} s: {tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def bench_env(database_url: str, fake_url: str, workdir: Path) -> dict[str, str]:
    """The settings every process of a run shares: its own database, the fake model, and files
    under `workdir` only."""
    return {
        "DATABASE_URL": database_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "MASSCER_LLM_BASE_URL": fake_url,
        "MASSCER_LLM_API_KEY": "sk-bench",
        "MASSCER_LLM_MODEL": "fake-model",
        "MASSCER_LLM_MODE": "chat",
        "MASSCER_MEDIA_ROOT": str(workdir / "uploads"),
        # Nothing may fall back to the project's var/ (development database, broker files).
        "MASSCER_VAR_DIR": str(workdir / "var"),
        "MASSCER_CLI_USER": "bench",
    }


# --- manage.py in a subprocess ---------------------------------------------------------------


def inline_django(workdir: Path, **env: str) -> None:
    """Configure Django in this process for a bench that runs the pipeline inline: a SQLite
    database and media under `workdir`, eager Celery tasks, quiet logs (`env` adds or
    overrides settings), then migrate."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="masscer.settings",
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        MASSCER_VAR_DIR=str(workdir),
        MASSCER_MEDIA_ROOT=str(workdir / "media"),
        CELERY_BROKER_URL="memory://",
        # The whole pipeline runs inline, task by task, after each commit.
        CELERY_TASK_ALWAYS_EAGER="true",
        MASSCER_LOG_LEVEL="WARNING",
        **env,
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def migrate(env: dict[str, str]) -> None:
    from testing.processes import manage

    migrated = manage("migrate", "--noinput", env=env, timeout=300)
    if migrated.returncode != 0:
        raise BenchError("migrate failed:\n" + migrated.stderr[-3000:])


def train(source: Path, count: int, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from testing.processes import manage

    return manage(
        "train", str(source), "--count", str(count), "--agent", "bench", "--json",
        "--timeout", str(timeout), env=env, timeout=timeout + 60,
    )  # fmt: skip


def train_summary(trained: subprocess.CompletedProcess[str], llm_log: Path) -> dict[str, Any]:
    """The JSON summary `manage.py train --json` printed last."""
    try:
        return json.loads(trained.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(
            f"train printed no summary (exit {trained.returncode}):\n{trained.stderr[-2000:]}\n"
            f"llm worker log:\n{tail(llm_log)}"
        ) from exc


# Runs inside `manage.py shell -c` against the bench database: the job and its work items.
_STATS_SCRIPT = r"""
import json
from training.models import Completion, TrainingJob, WorkItem
job = TrainingJob.objects.get(pk=JOB_ID)
items = list(WorkItem.objects.filter(job=job).values(*ITEM_FIELDS))
print(json.dumps({
    "status": job.status,
    "error": job.error,
    "created_count": job.created_count,
    "completions": Completion.objects.filter(job=job).count(),
    "calls": job.calls,
    "started_at": job.started_at.timestamp() if job.started_at else None,
    "finished_at": job.finished_at.timestamp() if job.finished_at else None,
    "items": items,
}))
"""


def job_stats(job_id: int, item_fields: tuple[str, ...], env: dict[str, str]) -> dict[str, Any]:
    """The job read back from the bench database, with `item_fields` of each of its work items."""
    from testing.processes import manage

    script = _STATS_SCRIPT.replace("JOB_ID", str(int(job_id))).replace("ITEM_FIELDS", repr(tuple(item_fields)))
    shell = manage("shell", "-c", script, env=env, timeout=120)
    if shell.returncode != 0:
        raise BenchError("reading the job back failed:\n" + shell.stderr[-3000:])
    return json.loads(shell.stdout.strip().splitlines()[-1])


# --- isolated databases --------------------------------------------------------------------------


def postgres_database(name: str) -> str:
    """Drop and recreate the PostgreSQL database `name`; its URL."""
    import psycopg

    from testing.processes import port_open

    if not port_open(PG_HOST, PG_PORT):
        raise BenchError(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}")
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def sqlite_database(workdir: Path) -> str:
    path = (workdir / "bench.sqlite3").resolve()
    if path == (PROJECT_ROOT / "var" / "db.sqlite3").resolve():  # belt and braces
        raise BenchError("refusing to use the development database")
    return f"sqlite:///{path}"


# --- reporting ---------------------------------------------------------------------------------


def machine() -> str:
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return (
        f"{os.cpu_count()} cores, {memory} RAM, Python {platform.python_version()} "
        f"({platform.system()} {platform.machine()})"
    )


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title} ({machine()})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def markdown_block(heading: str, rows: list[tuple[str, str]], command: str) -> str:
    """A subsection of BENCHMARKS.md: `heading`, date, machine, command and the table of `rows`."""
    lines = [
        heading,
        "",
        f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value.replace('|', '/')} |" for name, value in rows),
        "",
    ]
    return "\n".join(lines)


# --- BENCHMARKS.md -----------------------------------------------------------------------------


def _strip_blank_edges(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def merge_section(
    text: str, block: str, heading: str, *, section_heading: str, intro: str, before: str | None = None
) -> str:
    """`text` with the subsection `heading` of `section_heading` replaced or added, nothing else changed.

    A missing section is added at the end with `intro`. A new subsection goes at the end of the
    section, or just before the subsection `before` (such as "### Findings") when there is one.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section_heading), None)
    if start is None:
        head = _strip_blank_edges(lines) or ["# Benchmarks"]
        lines = [*head, "", section_heading, "", *intro.rstrip().splitlines()]
        start = len(head) + 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    new = block.rstrip().splitlines()
    sub = next((i for i, line in enumerate(section) if line.strip() == heading), None)
    if sub is None:
        last = None if before is None else next((i for i, line in enumerate(section) if line.strip() == before), None)
        if last is None:
            section = [*_strip_blank_edges(section), "", *new]
        else:
            rest = section[last:]
            section = [*_strip_blank_edges(section[:last]), "", *new, "", *rest]
    else:
        sub_end = next(
            (i for i in range(sub + 1, len(section)) if section[i].startswith(("### ", "## "))),
            len(section),
        )
        rest = _strip_blank_edges(section[sub_end:])
        section = [*_strip_blank_edges(section[:sub]), "", *new, *([""] + rest if rest else [])]
    after = lines[end:]
    merged = [*lines[:start], *section, *([""] + after if after else [])]
    return "\n".join(merged).rstrip() + "\n"


def _rewrite_benchmarks_md(transform: Callable[[str], str]) -> None:
    BENCHMARKS_MD.touch(exist_ok=True)
    with open(BENCHMARKS_MD, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # other benchmarks may write their sections at the same moment
        result = transform(handle.read())
        handle.seek(0)
        handle.write(result)
        handle.truncate()


def update_benchmarks_md(
    block: str, heading: str, *, section_heading: str, intro: str, before: str | None = None
) -> None:
    """Replace (or add) the subsection `heading` of `section_heading` (see merge_section);
    leave everything else alone."""
    _rewrite_benchmarks_md(
        lambda text: merge_section(text, block, heading, section_heading=section_heading, intro=intro, before=before)
    )


def replace_subsection(text: str, block: str, heading: str, *, section_heading: str, intro: str) -> str:
    """The pages and export benchmarks' way: `text` with the subsection `heading` of
    `section_heading` replaced in place (a blank line after it) or added at the section's end."""
    lines = (text or "# Benchmarks\n").rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == section_heading), None)
    if start is None:
        lines += ["", section_heading, "", *intro.rstrip().splitlines()]
        start = len(lines) - len(intro.rstrip().splitlines()) - 2
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    sub = next((i for i, line in enumerate(section) if line.strip() == heading), None)
    new = block.rstrip().splitlines()
    if sub is None:
        while section and not section[-1].strip():
            section.pop()
        section += ["", *new]
    else:
        sub_end = next(
            (i for i in range(sub + 1, len(section)) if section[i].startswith(("### ", "## "))), len(section)
        )
        section[sub:sub_end] = [*new, ""]
    while section and not section[-1].strip():
        section.pop()
    after = lines[end:]
    lines = [*lines[:start], *section, *([""] if after else []), *after]
    return "\n".join(lines) + "\n"


def write_section(block: str, heading: str, *, section_heading: str, intro: str) -> None:
    """Replace (or add) a subsection in BENCHMARKS.md with replace_subsection."""
    _rewrite_benchmarks_md(
        lambda text: replace_subsection(text, block, heading, section_heading=section_heading, intro=intro)
    )
