"""Capacity benchmark (B9): the workers as the Procfile starts them against a model that takes 64 calls at once.

Run from the project root::

    .venv/bin/python bench/capacity_bench.py [--repeat 3] [--threads 32] [--write]

What it does, all isolated from the development data:

* a PostgreSQL database of its own (``masscer_capacity``, dropped and recreated) and a private
  ``redis-server`` (free port, no persistence) as the broker and the rate limiter's store: a
  database number on the shared Redis is not enough, the test suite flushes some of them;
* the fake OpenAI-compatible server with 4 s per call and a capacity of 64 calls at once;
* the ``ingest`` and ``llm`` workers with the Procfile's own command lines (only the
  interpreter is this one), with ``MASSCER_LLM_MAX_CONCURRENCY=64``; ``--threads 32`` sets
  ``MASSCER_LLM_WORKER_THREADS`` (the llm worker's ``-P threads -c``) for the comparison;
* ``manage.py train GeoTopo-komprimiert.pdf --count 300 --agent bench --json``, timed from the
  moment it is started to the moment it returns.

Capacity bound = time before the first model call (extraction + chunking, measured) +
ceil(calls / 64) × 4 s; efficiency = bound / wall. Exact duplicates are completions of the job
whose question and answer are both identical to another's.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import (
    BENCHMARKS_MD,
    BenchError,
    Stack,
    bench_env,
    interrupt_on_signals,
    markdown_block,
    migrate,
    postgres_database,
    print_table,
    start_fake,
    tail,
    train,
    train_summary,
    update_benchmarks_md,
    wait_for_ready,
)
from throughput_bench import in_flight_profile

from testing.fakellm import FakeLLMClient
from testing.processes import child_env, free_port, manage, start_redis

DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
PG_DATABASE = "masscer_capacity"
SECTION = "## Capacity (B9)"
SECTION_INTRO = """\
`bench/capacity_bench.py`: `manage.py train GeoTopo-komprimiert.pdf --count 300` with the
workers started by the Procfile's own command lines (`MASSCER_LLM_MAX_CONCURRENCY=64`) against
the fake model server (4 s per call, 64 calls at once, 429 beyond). Wall = `train` start → end.
Capacity bound = time before the first model call + ceil(calls / 64) × 4 s; efficiency = bound / wall.
"""
PROCFILE_WORKERS = ("ingest", "llm")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")

# Runs in `manage.py shell -c`: the job's timestamps and its exact duplicate pairs.
_JOB_SCRIPT = r"""
import json
from django.db.models import Count
from training.models import Completion, TrainingJob
job = TrainingJob.objects.get(pk=JOB_ID)
groups = Completion.objects.filter(job=job).values("question", "answer").annotate(n=Count("id"))
print(json.dumps({
    "status": job.status,
    "created": job.created_count,
    "rows": Completion.objects.filter(job=job).count(),
    "duplicates": sum(g["n"] - 1 for g in groups if g["n"] > 1),
    "started_at": job.started_at.timestamp() if job.started_at else None,
}))
"""


@dataclass
class Run:
    wall: float  # train started -> returned (this clock)
    to_first_call: float  # train started -> first model call (extraction, chunking, queueing)
    delivered: int
    requested: int
    status: str
    calls: int  # model calls the fake answered
    rejected: int  # 429s
    max_in_flight: int
    mean_in_flight: float
    duplicates: int
    capacity: int
    latency: float

    @property
    def bound(self) -> float:
        return self.to_first_call + math.ceil(self.calls / self.capacity) * self.latency

    @property
    def efficiency(self) -> float:
        return self.bound / self.wall if self.wall > 0 else 0.0


# --- the Procfile's workers -----------------------------------------------------------------------


def procfile_command(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile's command for process `name`, with ${VAR:-default} expanded from `env` and
    this interpreter in place of `.venv/bin/...`."""
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            expanded = _DEFAULTED.sub(lambda m: env.get(m.group(1)) or m.group(2), command)
            words = shlex.split(expanded)
            if words[0].endswith("/celery"):
                return [sys.executable, "-m", "celery", *words[1:]]
            return [sys.executable, *words[1:]] if words[0].endswith("/python") else words
    raise BenchError(f"the Procfile has no {name!r} process")


def start_procfile_worker(stack: Stack, name: str, env: dict[str, str], log: Path) -> None:
    import subprocess

    command = procfile_command(name, env)
    print(f"{name}: {shlex.join(command)}", file=sys.stderr)
    output = open(log, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.add(name, process)
    wait_for_ready(log, process, name)


# --- one stack, one or more runs -------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]
    client: FakeLLMClient
    llm_log: Path


def private_redis(stack: Stack, workdir: Path) -> str:
    """A redis-server of the run's own; its URL."""
    if shutil.which("redis-server") is None:
        raise BenchError("redis-server is not installed (the benchmark starts a private one)")
    port = free_port()
    stack.add("redis", start_redis(port, workdir=workdir))
    return f"redis://127.0.0.1:{port}/0"


def start_stack(args: argparse.Namespace, workdir: Path, stack: Stack) -> Setup:
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    (workdir / "var").mkdir()
    database_url = postgres_database(args.pg_database)
    broker = private_redis(stack, workdir)
    options = ["--latency", f"{args.latency:g}", "--capacity", str(args.capacity)]
    fake_url = start_fake(stack, logs / "fake.log", options)
    extra = {"MASSCER_LLM_WORKER_THREADS": str(args.threads)} if args.threads else {}
    env = child_env(
        **bench_env(database_url, fake_url, workdir),
        CELERY_BROKER_URL=broker,
        MASSCER_RATELIMIT_REDIS_URL=broker,
        MASSCER_LLM_MAX_CONCURRENCY=str(args.capacity),
        **extra,
    )
    if not args.threads:
        env.pop("MASSCER_LLM_WORKER_THREADS", None)  # the Procfile's default, not the shell's
    print(f"database {database_url}, broker {broker}, fake {fake_url}", file=sys.stderr)
    migrate(env)
    for name in PROCFILE_WORKERS:
        start_procfile_worker(stack, name, env, logs / f"{name}.log")
    return Setup(env, FakeLLMClient(fake_url, timeout=60), logs / "llm.log")


def job_figures(job_id: int, env: dict[str, str]) -> dict[str, Any]:
    shell = manage("shell", "-c", _JOB_SCRIPT.replace("JOB_ID", str(int(job_id))), env=env, timeout=120)
    if shell.returncode != 0:
        raise BenchError("reading the job back failed:\n" + shell.stderr[-3000:])
    return json.loads(shell.stdout.strip().splitlines()[-1])


def one_run(args: argparse.Namespace, setup: Setup, source: Path) -> Run:
    setup.client.reset()
    began = time.time()
    trained = train(source, args.count, args.timeout, setup.env)
    wall = time.time() - began
    summary = train_summary(trained, setup.llm_log)
    job = job_figures(summary["job_id"], setup.env)
    calls = [c for c in setup.client.calls(brief=True) if c.get("endpoint") in ("chat", "completion")]
    if not calls:
        raise BenchError(f"the fake saw no model call; llm worker log:\n{tail(setup.llm_log)}")
    first = min(c["started"] for c in calls)
    last = max(c["ended"] or c["started"] for c in calls)
    peak, mean, _ = in_flight_profile(calls, first, last, args.capacity)
    state = setup.client.state()
    return Run(
        wall=wall,
        to_first_call=first - began,
        delivered=job["rows"],
        requested=args.count,
        status=job["status"],
        calls=sum(1 for c in calls if c.get("status") == 200),
        rejected=sum(1 for c in calls if c.get("rejected")),
        max_in_flight=max(peak, int(state.get("max_in_flight") or 0)),
        mean_in_flight=mean,
        duplicates=job["duplicates"],
        capacity=args.capacity,
        latency=args.latency,
    )


def run_ours(args: argparse.Namespace, source: Path, repeat: int) -> list[Run]:
    """Start the stack, run `repeat` jobs, stop everything; the runs. (head_to_head_bench uses it.)"""
    workdir = Path(tempfile.mkdtemp(prefix="masscer-capacity-"))
    stack = Stack()
    try:
        setup = start_stack(args, workdir, stack)
        runs = []
        for number in range(1, repeat + 1):
            print(f"run {number}/{repeat}: train {source.name} --count {args.count} ...", file=sys.stderr)
            runs.append(one_run(args, setup, source))
            print(f"  {runs[-1].wall:.1f} s, {runs[-1].delivered}/{args.count}", file=sys.stderr)
        return runs
    finally:
        stack.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report --------------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.wall)[(len(runs) - 1) // 2]


def llm_worker_label(threads: int) -> str:
    if threads:
        return f"-P threads -c {threads} (MASSCER_LLM_WORKER_THREADS={threads})"
    command = next(line for line in (PROJECT_ROOT / "Procfile").read_text().splitlines() if line.startswith("llm:"))
    return "as the Procfile: " + command.partition(":")[2].strip()


def table(runs: list[Run], args: argparse.Namespace) -> list[tuple[str, str]]:
    r = median_run(runs)
    waves = math.ceil(r.calls / r.capacity)
    rows = [
        ("llm worker", llm_worker_label(args.threads)),
        ("model", f"fake, {r.latency:g} s per call, {r.capacity} at once; MASSCER_LLM_MAX_CONCURRENCY={r.capacity}"),
        ("wall", f"{r.wall:.2f} s (`train` start → end)" + (f"; median of {len(runs)}" if len(runs) > 1 else "")),
        ("delivered", f"{r.delivered}/{r.requested} (job {r.status})"),
        ("calls", f"{r.calls} answered, {r.rejected} rejected (429)"),
        ("in flight", f"max {r.max_in_flight}, mean {r.mean_in_flight:.1f} over the call window"),
        ("before first call", f"{r.to_first_call:.2f} s (extraction, chunking, queueing)"),
        (
            "capacity bound",
            f"{r.bound:.2f} s = {r.to_first_call:.2f} + ceil({r.calls}/{r.capacity})={waves} × {r.latency:g}",
        ),
        ("efficiency", f"{r.efficiency:.0%} (bound / wall)"),
        ("exact duplicates", str(r.duplicates)),
    ]
    if len(runs) > 1:
        rows.append(("runs", ", ".join(f"{x.wall:.1f} s {x.delivered}/{x.requested}" for x in runs)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--count", "-n", type=int, default=300, help="completions asked (N)")
    add("--latency", type=float, default=4.0, help="seconds per model call")
    add("--capacity", type=int, default=64, help="calls the fake takes at once; also MASSCER_LLM_MAX_CONCURRENCY")
    add("--threads", type=int, default=0, help="llm worker threads (-P threads -c T); default: the Procfile's")
    add("--source", default=str(DEFAULT_SOURCE), help="document to train with")
    add("--pg-database", default=PG_DATABASE, help="PostgreSQL database (dropped and recreated)")
    add("--timeout", type=float, default=600, help="give up on a job after this long")
    add("--keep", action="store_true", help="keep the temporary directory (worker logs)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median wall is reported")
    parser.add_argument("--write", action="store_true", help="write the section to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if min(args.count, args.repeat, args.capacity) < 1 or args.latency <= 0 or args.threads < 0:
        parser.error("count, repeat, capacity and latency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = Path(args.source).resolve()
    if not source.is_file():
        print(f"no such source file: {source}", file=sys.stderr)
        return 2
    interrupt_on_signals()
    try:
        runs = run_ours(args, source, args.repeat)
    except KeyboardInterrupt:
        print("interrupted; workers and the fake server stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    rows = table(runs, args)
    title = "Capacity (B9)" + (f", llm -P threads -c {args.threads}" if args.threads else ", Procfile workers")
    print_table(title, rows)
    if args.write:
        heading = "### " + ("Procfile workers" if not args.threads else f"llm worker -P threads -c {args.threads}")
        command = ".venv/bin/python bench/capacity_bench.py"
        command += f" --threads {args.threads}" if args.threads else ""
        command += f" --repeat {args.repeat}" if args.repeat > 1 else ""
        block = markdown_block(heading, rows, command + " --write")
        update_benchmarks_md(block, heading, section_heading=SECTION, intro=SECTION_INTRO, before="### Findings")
        print(f"\nupdated {BENCHMARKS_MD.name} ({SECTION}, {heading})")
    return 0 if all(r.status == "completed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
