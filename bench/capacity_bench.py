"""Capacity benchmark (B9): the workers as the Procfile starts them against a model that takes 64 calls at once.

Run from the project root::

    .venv/bin/python bench/capacity_bench.py [--repeat 5] [--write]
    .venv/bin/python bench/capacity_bench.py --pool threads --concurrency 32 [--llm-processes 2]

What it does, all isolated from the development data:

* a PostgreSQL database of its own (``masscer_capacity``, dropped and recreated) and a private
  ``redis-server`` (free port, no persistence) as the broker and the rate limiter's store: a
  database number on the shared Redis is not enough, the test suite flushes some of them;
* the fake OpenAI-compatible server with 4 s per call and a capacity of 64 calls at once;
* the ``ingest`` and ``llm`` workers with the Procfile's own command lines (only the
  interpreter is this one), with ``MASSCER_LLM_MAX_CONCURRENCY=64``; for a comparison,
  ``--pool`` and ``--concurrency`` set ``MASSCER_LLM_POOL`` and ``MASSCER_LLM_WORKER_CONCURRENCY``
  (the llm worker's ``-P`` and ``-c``; ``--threads T`` is ``--pool threads --concurrency T``) and
  ``--llm-processes K`` starts K llm workers from the same line;
* ``manage.py train GeoTopo-komprimiert.pdf --count 300 --agent bench --json``, timed from the
  moment it is started to the moment it returns.

Capacity bound = time before the first model call (extraction + chunking, measured) +
ceil(calls / 64) × 4 s; efficiency = bound / wall. Exact duplicates are completions of the job
whose question and answer are both identical to another's.

What explains a gap (the "GIL queue": replies that arrive together each need some CPU in the
llm worker, one after the other in one process): the llm workers' CPU seconds per answered
call, the machine's busy cores during the run (other programs count too), and per reply the
delay from the fake sending it to its pairs being stored (the completions' ``created_at``; a
call is matched to its work item by the hash of the source in its prompt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
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
from throughput_bench import CpuSampler, in_flight_profile, process_cpu_seconds

from testing.fakellm import FakeLLMClient
from testing.processes import child_env, free_port, manage, start_redis
from testing.procfile import procfile_command, procfile_line

DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
PG_DATABASE = "masscer_capacity"
SECTION = "## Capacity (B9)"
SECTION_INTRO = """\
`bench/capacity_bench.py`: `manage.py train GeoTopo-komprimiert.pdf --count 300` with the
workers started by the Procfile's own command lines (`MASSCER_LLM_MAX_CONCURRENCY=64`) against
the fake model server (4 s per call, 64 calls at once, 429 beyond). Wall = `train` start → end.
Capacity bound = time before the first model call + ceil(calls / 64) × 4 s; efficiency = bound / wall.
"""

# Runs in `manage.py shell -c`: the job's timestamps, its exact duplicate pairs, and what
# matches a call to the moments its pairs were stored: the chunks of the work item whose source
# (hashed as the fake hashes it) the call carried, and each completion's chunk and created_at.
_JOB_SCRIPT = r"""
import json
from django.db.models import Count
from testing.fakellm.prompts import source_hash
from training.models import Chunk, Completion, TrainingJob, WorkItem
from training.services.replies import model_source
job = TrainingJob.objects.get(pk=JOB_ID)
groups = Completion.objects.filter(job=job).values("question", "answer").annotate(n=Count("id"))
sources = {}
for item in WorkItem.objects.filter(job=job).select_related("chunk", "job"):
    chunk = item.chunk
    span = Chunk.objects.filter(
        document_id=chunk.document_id, conversation_id=chunk.conversation_id,
        index__gte=chunk.index, index__lt=chunk.index + max(1, getattr(item, "span", 1)),
    ).values_list("id", flat=True)
    sources.setdefault(source_hash(model_source(item)), []).extend(span)
stored = [[c, t.timestamp()] for c, t in Completion.objects.filter(job=job).values_list("chunk_id", "created_at")]
print(json.dumps({
    "status": job.status,
    "created": job.created_count,
    "rows": Completion.objects.filter(job=job).count(),
    "duplicates": sum(g["n"] - 1 for g in groups if g["n"] > 1),
    "started_at": job.started_at.timestamp() if job.started_at else None,
    "finished_at": job.finished_at.timestamp() if job.finished_at else None,
    "planned_at": max(WorkItem.objects.filter(job=job).values_list("enqueued_at", flat=True)).timestamp(),
    "sources": sources,
    "stored": stored,
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
    llm_cpu: float  # CPU seconds of the llm worker process(es) during the run
    busy_cores: float | None  # the machine's busy cores during the run (everything on it)
    store_delays: list[float]  # per matched reply: fake sent it -> its pairs stored (s)
    ramp: float  # first call started -> the first wave full (min(capacity, calls) started)
    # train started -> the last work item planned: the last pages read (with generation while
    # extracting, calls about text not read yet cannot start before it)
    to_last_planned: float = 0.0
    to_last_reply: float = 0.0  # train started -> the fake sent its last reply
    to_closed: float = 0.0  # train started -> the job closed (its finished_at)

    @property
    def bound(self) -> float:
        return self.to_first_call + math.ceil(self.calls / self.capacity) * self.latency

    @property
    def read_bound(self) -> float:
        """The issue's bound (extraction plus the waves), with extraction ending when the last
        work item is planned: the calls about the last pages start then at the earliest."""
        return max(self.bound, self.to_last_planned + self.latency)

    @property
    def efficiency(self) -> float:
        return self.bound / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_per_call(self) -> float:
        return self.llm_cpu / self.calls if self.calls else 0.0


# --- the Procfile's workers -----------------------------------------------------------------------


def start_procfile_worker(
    stack: Stack, name: str, env: dict[str, str], log: Path, *, node: str | None = None
) -> subprocess.Popen[bytes]:
    """Start the Procfile's process `name` (as node `node`@host, when given) and wait until it is ready."""
    command = procfile_command(name, env)
    if node is not None:
        command = [f"{node}@%h" if word == f"{name}@%h" else word for word in command]
    print(f"{node or name}: {shlex.join(command)}", file=sys.stderr)
    output = open(log, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.add(node or name, process)
    wait_for_ready(log, process, node or name)
    return process


# --- one stack, one or more runs -------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]
    client: FakeLLMClient
    llm_log: Path
    llm_pids: list[int]


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
    env = child_env(
        **bench_env(database_url, fake_url, workdir),
        CELERY_BROKER_URL=broker,
        MASSCER_RATELIMIT_REDIS_URL=broker,
        MASSCER_LLM_MAX_CONCURRENCY=str(args.capacity),
    )
    # The Procfile's defaults unless the comparison names a pool or a concurrency, not the shell's.
    for name, value in llm_overrides(args).items():
        env.pop(name, None)
        if value:
            env[name] = value
    print(f"database {database_url}, broker {broker}, fake {fake_url}", file=sys.stderr)
    migrate(env)
    start_procfile_worker(stack, "ingest", env, logs / "ingest.log")
    llm_log = logs / "llm.log"
    if args.llm_processes == 1:
        pids = [start_procfile_worker(stack, "llm", env, llm_log).pid]
    else:
        pids = [
            start_procfile_worker(stack, "llm", env, llm_log, node=f"llm{number}").pid
            for number in range(1, args.llm_processes + 1)
        ]
    return Setup(env, FakeLLMClient(fake_url, timeout=60), llm_log, pids)


def llm_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The Procfile llm line's variables this run sets ("" = the Procfile's default)."""
    pool, concurrency = ("threads", args.threads) if args.threads else (args.pool, args.concurrency)
    return {
        "MASSCER_LLM_POOL": pool or "",
        "MASSCER_LLM_WORKER_CONCURRENCY": str(concurrency or ""),
        "MASSCER_LLM_WORKER_THREADS": "",  # the old name (Makefile before B9's pool change)
    }


def job_figures(job_id: int, env: dict[str, str]) -> dict[str, Any]:
    shell = manage("shell", "-c", _JOB_SCRIPT.replace("JOB_ID", str(int(job_id))), env=env, timeout=120)
    if shell.returncode != 0:
        raise BenchError("reading the job back failed:\n" + shell.stderr[-3000:])
    return json.loads(shell.stdout.strip().splitlines()[-1])


def store_delays(calls: list[dict[str, Any]], job: dict[str, Any], latency: float) -> list[float]:
    """Per answered call whose work item is known by its source hash: the fake sent the reply ->
    the first of its item's completions stored after that (delays of a latency or more belong to
    a later reply of the item: the pairs of this one were all turned down, so it is left out)."""
    stored: dict[int, list[float]] = {}
    for chunk_id, created in job["stored"]:
        stored.setdefault(chunk_id, []).append(created)
    delays = []
    for call in calls:
        chunks = job["sources"].get(call.get("source_hash") or "")
        if call.get("status") != 200 or not chunks or not call.get("ended"):
            continue
        after = [t for chunk in chunks for t in stored.get(chunk, ()) if t >= call["ended"] - 0.05]
        if after and min(after) - call["ended"] < latency:
            delays.append(max(0.0, min(after) - call["ended"]))
    return delays


def one_run(args: argparse.Namespace, setup: Setup, source: Path) -> Run:
    setup.client.reset()
    cpu_before = sum(process_cpu_seconds(pid) for pid in setup.llm_pids)
    began = time.time()
    with CpuSampler() as sampler:
        trained = train(source, args.count, args.timeout, setup.env)
    wall = time.time() - began
    llm_cpu = sum(process_cpu_seconds(pid) for pid in setup.llm_pids) - cpu_before
    summary = train_summary(trained, setup.llm_log)
    job = job_figures(summary["job_id"], setup.env)
    calls = [c for c in setup.client.calls(brief=True) if c.get("endpoint") in ("chat", "completion")]
    if not calls:
        raise BenchError(f"the fake saw no model call; llm worker log:\n{tail(setup.llm_log)}")
    starts = sorted(c["started"] for c in calls)
    first, last = starts[0], max(c["ended"] or c["started"] for c in calls)
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
        llm_cpu=llm_cpu,
        busy_cores=sampler.busy_cores(began, began + wall),
        store_delays=store_delays(calls, job, args.latency),
        ramp=starts[min(args.capacity, len(starts)) - 1] - first,
        to_last_planned=job["planned_at"] - began,
        to_last_reply=last - began,
        to_closed=(job["finished_at"] or began) - began,
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


def variant(args: argparse.Namespace) -> str | None:
    """What this run changes in the Procfile's llm worker, e.g. "-P threads -c 32 × 2"; None: nothing."""
    overrides = {k: v for k, v in llm_overrides(args).items() if v}
    if not overrides and args.llm_processes == 1:
        return None
    pool = overrides.get("MASSCER_LLM_POOL", "(Procfile)")
    concurrency = overrides.get("MASSCER_LLM_WORKER_CONCURRENCY", "(Procfile)")
    return f"-P {pool} -c {concurrency}" + (f" × {args.llm_processes}" if args.llm_processes > 1 else "")


def llm_worker_label(args: argparse.Namespace) -> str:
    command = procfile_line("llm")
    changed = variant(args)
    return f"as the Procfile: {command}" if changed is None else f"{changed} (Procfile line: {command})"


def busy_label(busy_cores: float | None) -> str:
    return "?" if busy_cores is None else f"{busy_cores:.2f} of {os.cpu_count()} cores during the run (all programs)"


def delays_label(delays: list[float], calls: int) -> str:
    if not delays:
        return f"no reply matched to its stored pairs (of {calls})"
    ordered = sorted(delays)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms ({len(ordered)} of {calls} replies matched)"
    )


def table(runs: list[Run], args: argparse.Namespace) -> list[tuple[str, str]]:
    r = median_run(runs)
    waves = math.ceil(r.calls / r.capacity)
    rows = [
        ("llm worker", llm_worker_label(args)),
        ("model", f"fake, {r.latency:g} s per call, {r.capacity} at once; MASSCER_LLM_MAX_CONCURRENCY={r.capacity}"),
        ("wall", f"{r.wall:.2f} s (`train` start → end)" + (f"; median of {len(runs)}" if len(runs) > 1 else "")),
        ("delivered", f"{r.delivered}/{r.requested} (job {r.status})"),
        ("calls", f"{r.calls} answered, {r.rejected} rejected (429)"),
        ("in flight", f"max {r.max_in_flight}, mean {r.mean_in_flight:.1f} over the call window"),
        ("before first call", f"{r.to_first_call:.2f} s (extraction, chunking, queueing)"),
        ("first call → end", f"{r.wall - r.to_first_call:.2f} s (bound {r.bound - r.to_first_call:g} s)"),
        ("first wave", f"call {min(r.capacity, r.calls + r.rejected)} started {r.ramp:.2f} s after the first"),
        (
            "capacity bound",
            f"{r.bound:.2f} s = {r.to_first_call:.2f} + ceil({r.calls}/{r.capacity})={waves} × {r.latency:g}",
        ),
        ("efficiency", f"{r.efficiency:.0%} (bound / wall)"),
        (
            "read bound",
            f"{r.read_bound:.2f} s = last work item planned {r.to_last_planned:.2f} s + {r.latency:g}: "
            f"{r.read_bound / r.wall:.0%} of the wall (the last pages' calls cannot start earlier)",
        ),
        (
            "last reply → end",
            f"{r.wall - r.to_last_reply:.2f} s: {r.to_closed - r.to_last_reply:.2f} s to store the pairs "
            f"and close the job, {r.wall - r.to_closed:.2f} s for `train` to see it and exit",
        ),
        ("exact duplicates", str(r.duplicates)),
        (
            "llm worker CPU",
            f"{r.llm_cpu:.2f} s = {r.cpu_per_call * 1000:.0f} ms per answered call, "
            f"{args.llm_processes} process(es)",
        ),
        ("reply sent → pairs stored", delays_label(r.store_delays, r.calls)),
        ("machine busy", busy_label(r.busy_cores)),
    ]
    if len(runs) > 1:
        each = (f"{x.wall:.1f} s {x.delivered}/{x.requested} {x.cpu_per_call * 1000:.0f} ms CPU/call" for x in runs)
        rows.append(("runs", ", ".join(each)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--count", "-n", type=int, default=300, help="completions asked (N)")
    add("--latency", type=float, default=4.0, help="seconds per model call")
    add("--capacity", type=int, default=64, help="calls the fake takes at once; also MASSCER_LLM_MAX_CONCURRENCY")
    add("--threads", type=int, default=0, help="shorthand for --pool threads --concurrency T")
    add("--pool", choices=("threads", "gevent", "solo"), default="", help="llm worker pool; default: the Procfile's")
    add("--concurrency", type=int, default=0, help="llm worker -c; default: the Procfile's")
    add("--llm-processes", type=int, default=1, help="llm workers started from the Procfile's line")
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
    check_arguments(parser, args)
    return args


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.count, args.repeat, args.capacity, args.llm_processes) < 1 or args.latency <= 0:
        parser.error("count, repeat, capacity, llm-processes and latency must be positive")
    if args.threads < 0 or args.concurrency < 0:
        parser.error("threads and concurrency must not be negative")
    if args.threads and (args.pool or args.concurrency):
        parser.error("--threads T is --pool threads --concurrency T: give one or the other")


def command_options(args: argparse.Namespace) -> str:
    """The options that reproduce this run's variant and repeat count."""
    options = f" --threads {args.threads}" if args.threads else ""
    options += f" --pool {args.pool}" if args.pool else ""
    options += f" --concurrency {args.concurrency}" if args.concurrency else ""
    options += f" --llm-processes {args.llm_processes}" if args.llm_processes > 1 else ""
    return options + (f" --repeat {args.repeat}" if args.repeat > 1 else "")


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
    changed = variant(args)
    print_table("Capacity (B9), " + (f"llm {changed}" if changed else "Procfile workers"), rows)
    if args.write:
        heading = "### " + (f"llm worker {changed}" if changed else "Procfile workers")
        command = ".venv/bin/python bench/capacity_bench.py" + command_options(args)
        block = markdown_block(heading, rows, command + " --write")
        update_benchmarks_md(block, heading, section_heading=SECTION, intro=SECTION_INTRO, before="### Findings")
        print(f"\nupdated {BENCHMARKS_MD.name} ({SECTION}, {heading})")
    return 0 if all(r.status == "completed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
