"""Generation throughput benchmark: real workers against the fake model with a fixed latency.

Run from the project root::

    .venv/bin/python bench/throughput_bench.py [--concurrency 16] [--latency 0.5] [--count 300]
                                               [--database postgres|sqlite] [--repeat 3]

(``--repeat R`` runs R jobs on the same stack and reports the median; ``--llm-processes K``
splits the C threads over K llm workers; ``--dump FILE`` keeps the raw call log.)

What it does, all isolated from the development data (var/db.sqlite3 is never opened):

* a database of its own: PostgreSQL ``masscer_bench`` (dropped, recreated) or a SQLite file in
  a temporary directory, migrated with ``manage.py migrate`` in a subprocess;
* a Redis database number of its own (``--redis-db``, flushed first) as the broker;
* the fake OpenAI-compatible server (``python -m testing.fakellm``) with ``--latency``
  seconds per call and a capacity of at least the worker concurrency;
* one ``ingest`` worker (prefork, concurrency 1) and one ``llm`` worker (threads, concurrency C);
* ``manage.py train GeoTopo-komprimiert.pdf --count N --agent bench --json``.

The generation phase is measured from the fake's call log (first call start to last call end)
and from the job's own started_at → finished_at. The ideal bound for C concurrent calls of
latency L is ``max(ceil(calls / C), max_k) * L`` where ``max_k`` is the most model calls one
chunk made (they are sequential). Efficiency = bound / measured wall time; the goal is ≥ 85 %.
The figures are printed and written to the "## Generation throughput" section of BENCHMARKS.md
(one subsection per database, other sections untouched).

Besides the bound it prints what explains a gap: the llm worker's CPU per call (one process,
one GIL), the machine's CPU use during the window (other programs count too), the database
connections opened and the time between two calls of the same chunk. Exit status 1 when a
job does not make exactly N completions; being below the efficiency goal is reported, not
an error.

Everything the benchmark starts (workers, fake server) is stopped on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import (
    BENCHMARKS_MD,
    PG_HOST,
    PG_PORT,
    PG_USER,
    BenchError,
    Stack,
    bench_env,
    interrupt_on_signals,
    job_stats,
    markdown_block,
    migrate,
    postgres_database,
    print_table,
    sqlite_database,
    start_fake,
    train,
    train_summary,
    update_benchmarks_md,
    wait_for_ready,
)

from testing.fakellm import FakeLLMClient
from testing.processes import REDIS_HOST, REDIS_PORT, child_env, port_open, start_worker

DEFAULT_SOURCE = PROJECT_ROOT / ".." / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
PG_DATABASE = "masscer_bench"
SECTION = "## Generation throughput"
GOAL = 0.85

# What job_stats reads of each of the job's work items.
ITEM_FIELDS = (
    "chunk_id", "chunk__content_hash", "chunk__token_count", "quota", "made", "calls", "attempts", "status", "reasons"
)


class CpuSampler:
    """Machine-wide CPU use (from /proc/stat), to tell a busy machine from a slow program."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time, total jiffies, idle jiffies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
                self.samples.append((time.time(), float(sum(values)), float(values[3] + values[4])))
            if self._stop.wait(self.interval):
                return

    def busy_cores(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (_, total0, idle0), (_, total1, idle1) = inside[0], inside[-1]
        if total1 <= total0:
            return None
        return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, all its threads (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- isolated database and broker --------------------------------------------------------------


def postgres_sessions() -> int | None:
    """Connections ever opened to the bench database (PostgreSQL 14+), None if unknown."""
    import psycopg

    with (
        contextlib.suppress(Exception),
        psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as connection,
    ):
        time.sleep(1.0)  # session statistics are flushed when a backend exits, with some delay
        row = connection.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [PG_DATABASE]).fetchone()
        return int(row[0]) if row and row[0] is not None else None
    return None


def redis_broker(db: int) -> str:
    import redis

    if not port_open(REDIS_HOST, REDIS_PORT):
        raise BenchError(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class Figures:
    database: str
    concurrency: int
    capacity: int  # the fake's limit on calls at once (429 beyond it)
    slots: int  # the product's shared limit on calls at once (0: none)
    latency: float
    requested: int
    chunks: int
    quotas: str
    status: str
    created: int
    completions_rows: int
    calls: int
    calls_http: int
    calls_rejected: int
    calls_min: int
    max_k: int
    wall_calls: float  # first call start -> last call end (the fake's clock)
    wall_generation: float  # first call start -> job finished_at
    wall_job: float  # job started_at -> finished_at (includes extraction and chunking)
    prepare: float  # job started_at -> first call start
    tail_after_last_call: float  # last call end -> job finished_at
    bound: float
    bound_waves: float
    bound_critical: float
    max_in_flight: int
    mean_in_flight: float
    time_at_full: float  # fraction of the call window with C calls in flight
    call_seconds_mean: float
    between_calls_mean: float  # same chunk: previous call end -> next call start
    between_calls_max: float
    llm_processes: int = 1
    llm_cpu: float | None = None  # CPU seconds the llm worker process(es) used during the job
    machine_busy: float | None = None  # cores busy machine-wide during the call window
    db_sessions: int | None = None  # PostgreSQL connections opened during the run
    error: str = ""

    @property
    def effective(self) -> int:
        """Calls that can be in flight at once: the worker threads or the model's capacity."""
        return min(self.concurrency, self.capacity)

    @property
    def processes_note(self) -> str:
        return f" over {self.llm_processes} processes" if self.llm_processes > 1 else ""

    @property
    def efficiency(self) -> float:
        return self.bound / self.wall_calls if self.wall_calls > 0 else 0.0

    @property
    def efficiency_generation(self) -> float:
        return self.bound / self.wall_generation if self.wall_generation > 0 else 0.0

    @property
    def completions_per_second(self) -> float:
        return self.created / self.wall_generation if self.wall_generation > 0 else 0.0

    @property
    def calls_per_second(self) -> float:
        return self.calls_http / self.wall_calls if self.wall_calls > 0 else 0.0

    @property
    def exact(self) -> bool:
        return self.status == "completed" and self.created == self.requested == self.completions_rows


def in_flight_profile(calls: list[dict[str, Any]], start: float, end: float, c: int) -> tuple[int, float, float]:
    """(max in flight, mean in flight, fraction of [start, end] with >= c in flight)."""
    events: list[tuple[float, int]] = []
    for call in calls:
        events.append((call["started"], 1))
        events.append((call["ended"] or end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    level = peak = 0
    area = full = 0.0
    previous = start
    for moment, delta in events:
        span = max(0.0, moment - previous)
        area += level * span
        if level >= c:
            full += span
        previous = moment
        level += delta
        peak = max(peak, level)
    window = max(1e-9, end - start)
    return peak, area / window, full / window


def measure(
    *,
    args: argparse.Namespace,
    calls: list[dict[str, Any]],
    stats: dict[str, Any],
    max_in_flight: int,
    cpu: CpuSampler | None = None,
    db_sessions: int | None = None,
    llm_cpu: float | None = None,
) -> Figures:
    generation = [c for c in calls if c.get("endpoint") in ("chat", "completion")]
    served = [c for c in generation if c.get("status") == 200]
    rejected = [c for c in generation if c.get("rejected")]
    if not served:
        raise BenchError(f"the fake saw no successful model call; job: {json.dumps(stats)[:2000]}")
    first = min(c["started"] for c in generation)
    last = max(c["ended"] or c["started"] for c in generation)
    finished = stats["finished_at"] or last
    started = stats["started_at"] or first
    items = stats["items"]
    per_call = int(os.environ.get("MASSCER_PAIRS_PER_CALL", "10"))
    # Answered calls per chunk from the fake's log, by the hash of the chunk text it was sent.
    by_source: dict[str, list[dict[str, Any]]] = {}
    for call in sorted(served, key=lambda c: c["started"]):
        by_source.setdefault(call["source_hash"], []).append(call)
    max_k = max(len(v) for v in by_source.values())
    gaps = [
        later["started"] - earlier["ended"]
        for chunk_calls in by_source.values()
        for earlier, later in itertools.pairwise(chunk_calls)
    ]
    # The provider's capacity caps the useful concurrency.
    c, latency = min(args.concurrency, args.capacity), args.latency
    bound_waves = math.ceil(len(served) / c) * latency
    bound_critical = max_k * latency
    peak, mean, full = in_flight_profile(generation, first, last, c)
    quotas = sorted(i["quota"] for i in items)
    return Figures(
        database=args.database,
        concurrency=args.concurrency,
        capacity=args.capacity,
        slots=args.max_concurrency,
        latency=latency,
        requested=args.count,
        chunks=len(items),
        quotas=f"{quotas[0]}–{quotas[-1]}" if quotas else "-",
        status=stats["status"],
        created=stats["created_count"],
        completions_rows=stats["completions"],
        calls=stats["calls"],
        calls_http=len(served),
        calls_rejected=len(rejected),
        calls_min=sum(math.ceil(i["quota"] / per_call) for i in items),
        max_k=max_k,
        wall_calls=last - first,
        wall_generation=finished - first,
        wall_job=finished - started,
        prepare=first - started,
        tail_after_last_call=finished - last,
        bound=max(bound_waves, bound_critical),
        bound_waves=bound_waves,
        bound_critical=bound_critical,
        max_in_flight=max(max_in_flight, peak),
        mean_in_flight=mean,
        time_at_full=full,
        call_seconds_mean=sum((x["ended"] - x["started"]) for x in served) / len(served),
        between_calls_mean=sum(gaps) / len(gaps) if gaps else 0.0,
        between_calls_max=max(gaps, default=0.0),
        llm_processes=args.llm_processes,
        llm_cpu=llm_cpu,
        machine_busy=cpu.busy_cores(first, last) if cpu else None,
        db_sessions=db_sessions,
        error=stats.get("error") or "",
    )


def table(f: Figures) -> list[tuple[str, str]]:
    verdict = "meets" if f.efficiency >= GOAL else "BELOW"
    exact = "yes" if f.exact else f"NO ({f.created} created, {f.completions_rows} rows, status {f.status})"
    rows = [
        ("database", f.database),
        ("llm worker", f"threads, concurrency {f.concurrency}{f.processes_note}"),
        (
            "model capacity",
            f"{f.capacity} calls at once (fake server; 429 beyond); product limit "
            + (f"MASSCER_LLM_MAX_CONCURRENCY={f.slots}" if f.slots else "none"),
        ),
        ("model latency", f"{f.latency:g} s per call (fake server)"),
        ("job", f"{f.status}; {f.chunks} chunks, quotas {f.quotas}"),
        ("completions", f"{f.created} of {f.requested} (exactly N: {exact})"),
        (
            "model calls",
            (
                f"{f.calls_http} (job counter {f.calls}, minimum {f.calls_min}, "
                f"429s {f.calls_rejected}, max per chunk {f.max_k})"
            ),
        ),
        ("call window", f"{f.wall_calls:.2f} s (first call start → last call end)"),
        (
            "generation",
            (f"{f.wall_generation:.2f} s (first call → job finished; tail {f.tail_after_last_call:.2f} s)"),
        ),
        (
            "job started→finished",
            f"{f.wall_job:.2f} s (extraction + chunking {f.prepare:.2f} s)",
        ),
        ("completions/s", f"{f.completions_per_second:.1f}"),
        (
            "calls/s",
            f"{f.calls_per_second:.2f} (ideal {f.effective / f.latency:.1f})",
        ),
        (
            "ideal bound",
            (
                f"{f.bound:.2f} s = max(ceil({f.calls_http}/{f.effective})×{f.latency:g} = "
                f"{f.bound_waves:.2f}, {f.max_k}×{f.latency:g} = {f.bound_critical:.2f})"
            ),
        ),
        (
            "efficiency",
            (
                f"{f.efficiency:.0%} of the bound over the call window ({verdict} the "
                f"{GOAL:.0%} goal); {f.efficiency_generation:.0%} up to job finished"
            ),
        ),
        (
            "in flight",
            (
                f"max {f.max_in_flight} of {f.effective}, mean {f.mean_in_flight:.1f}, "
                f"all {f.effective} busy {f.time_at_full:.0%} of the window"
            ),
        ),
        (
            "per call",
            (
                f"{f.call_seconds_mean:.3f} s at the server; same chunk between calls "
                f"mean {f.between_calls_mean * 1000:.0f} ms, max {f.between_calls_max * 1000:.0f} ms"
            ),
        ),
    ]
    if f.llm_cpu is not None and f.calls_http:
        per_call = f.llm_cpu / f.calls_http
        need = per_call * f.effective / f.latency / f.llm_processes if f.latency else 0.0
        rows.append(
            (
                "llm worker CPU",
                f"{f.llm_cpu:.2f} s for the job = {per_call * 1000:.0f} ms per call; at the ideal "
                f"{f.effective / f.latency:.0f} calls/s that is {need:.0%} of one core per process (one GIL)",
            )
        )
    if f.machine_busy is not None:
        rows.append(
            (
                "machine CPU",
                (
                    f"{f.machine_busy:.2f} of {os.cpu_count()} cores busy during the call window "
                    "(all processes, not only this benchmark)"
                ),
            )
        )
    if f.db_sessions is not None:
        rows.append(
            (
                "DB connections",
                f"{f.db_sessions} opened to {PG_DATABASE} during the run",
            )
        )
    return rows


# --- BENCHMARKS.md -----------------------------------------------------------------------------


SECTION_INTRO = """\
`bench/throughput_bench.py`: `manage.py train` on GeoTopo-komprimiert.pdf (117 pages) with
real Celery workers (Redis broker; ingest prefork ×1, llm threads ×C) against the fake model
server with a fixed latency per call. Ideal bound = max(ceil(calls / C) × L, max calls of one
chunk × L); efficiency = bound / measured call window (goal ≥ 85 %).
"""


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, stack: Stack) -> list[Figures]:
    source = Path(args.source).resolve()
    if not source.is_file():
        raise BenchError(f"no such source file: {source}")
    logs = workdir / "logs"
    logs.mkdir()
    (workdir / "var").mkdir()
    if args.database == "postgres":
        database_url = postgres_database(PG_DATABASE)
    else:
        database_url = sqlite_database(workdir)
    broker = redis_broker(args.redis_db)
    fake_url = start_fake(stack, logs / "fake.log", ["--latency", str(args.latency), "--capacity", str(args.capacity)])
    env = child_env(
        **bench_env(database_url, fake_url, workdir),
        CELERY_BROKER_URL=broker,
        MASSCER_LLM_MAX_CONCURRENCY=str(args.max_concurrency),
    )
    print(f"database {database_url}, broker {broker}, fake {fake_url}", file=sys.stderr)
    migrate(env)

    ingest_log = logs / "ingest.log"
    ingest = stack.add(
        "ingest",
        start_worker(
            env,
            queues="ingest",
            pool="prefork",
            concurrency=1,
            name="bench-ingest",
            log_path=ingest_log,
        ),
    )
    # C threads in one llm worker (the default topology), or split over several processes.
    shares = [
        args.concurrency // args.llm_processes + (i < args.concurrency % args.llm_processes)
        for i in range(args.llm_processes)
    ]
    llm_workers = []
    for i, threads in enumerate(shares):
        log = logs / f"llm{i}.log"
        worker = start_worker(
            env,
            queues="llm",
            pool="threads",
            concurrency=threads,
            name=f"bench-llm{i}",
            log_path=log,
        )
        llm_workers.append((log, stack.add(f"llm{i}", worker)))
    wait_for_ready(ingest_log, ingest, "ingest")
    for log, worker in llm_workers:
        wait_for_ready(log, worker, "llm")
    llm_log = llm_workers[0][0]
    llm_pids = [worker.pid for _, worker in llm_workers]

    client = FakeLLMClient(fake_url, timeout=60)
    results: list[Figures] = []
    dumps: list[dict[str, Any]] = []
    for number in range(1, args.repeat + 1):
        client.reset()  # a fresh call log and in-flight maximum per run
        figures, dump = one_job(args, env, source, client, llm_log, llm_pids, number)
        results.append(figures)
        dumps.append(dump)
    if args.dump:
        Path(args.dump).write_text(json.dumps(dumps, default=str))
    return results


def one_job(
    args: argparse.Namespace,
    env: dict[str, str],
    source: Path,
    client: FakeLLMClient,
    llm_log: Path,
    llm_pids: list[int],
    number: int,
) -> tuple[Figures, dict[str, Any]]:
    sessions_before = postgres_sessions() if args.database == "postgres" else None
    print(
        f"run {number}/{args.repeat}: train {source.name} --count {args.count} ...",
        file=sys.stderr,
    )
    began = time.monotonic()
    llm_cpu_before = sum(process_cpu_seconds(pid) for pid in llm_pids)
    with CpuSampler() as cpu:
        trained = train(source, args.count, args.timeout, env)
    llm_cpu = sum(process_cpu_seconds(pid) for pid in llm_pids) - llm_cpu_before
    print(
        f"train returned {trained.returncode} after {time.monotonic() - began:.1f} s",
        file=sys.stderr,
    )
    summary = train_summary(trained, llm_log)
    if summary["status"] != "completed":
        print(
            f"the job ended {summary['status']}: {summary.get('error')}",
            file=sys.stderr,
        )

    stats = job_stats(summary["job_id"], ITEM_FIELDS, env)
    calls = client.calls(brief=True)
    state = client.state()
    sessions_after = postgres_sessions() if sessions_before is not None else None
    sessions = None
    if sessions_before is not None and sessions_after is not None:
        sessions = sessions_after - sessions_before
    figures = measure(
        args=args,
        calls=calls,
        stats=stats,
        max_in_flight=int(state.get("max_in_flight") or 0),
        cpu=cpu,
        db_sessions=sessions,
        llm_cpu=llm_cpu,
    )
    return figures, {"summary": summary, "stats": stats, "calls": calls}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--concurrency", "-c", type=int, default=16, help="llm worker threads (C)")
    add("--latency", type=float, default=0.5, help="seconds per model call (L)")
    add("--count", "-n", type=int, default=300, help="completions to make (N)")
    add("--database", choices=("postgres", "sqlite"), default="postgres")
    add(
        "--llm-processes",
        type=int,
        default=1,
        help="split the C threads over this many llm worker processes (default 1)",
    )
    add(
        "--repeat",
        type=int,
        default=1,
        help="jobs to run on the same stack; the median is reported",
    )
    add("--capacity", type=int, default=64, help="calls the fake model takes at once (429 beyond)")
    add(
        "--max-concurrency",
        type=int,
        default=None,
        help="the product's shared limit on calls at once (MASSCER_LLM_MAX_CONCURRENCY); "
        "default: the capacity when it is below the concurrency, else none",
    )
    add("--redis-db", type=int, default=12, help="Redis database number (flushed first)")
    add("--source", default=str(DEFAULT_SOURCE), help="document to train with")
    add("--timeout", type=float, default=600, help="give up on a job after this long")
    add("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    add("--keep", action="store_true", help="keep the temporary directory (worker logs)")
    add("--dump", help="write the raw call logs and job stats to this JSON file")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.count, args.repeat, args.llm_processes) < 1 or args.latency <= 0:
        parser.error("concurrency, count, repeat, llm-processes and latency must be positive")
    if args.llm_processes > args.concurrency:
        parser.error("--llm-processes cannot exceed --concurrency")
    if args.max_concurrency is None:
        args.max_concurrency = args.capacity if args.capacity < args.concurrency else 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = (
        f".venv/bin/python bench/throughput_bench.py --concurrency {args.concurrency} "
        f"--latency {args.latency:g} --count {args.count} --database {args.database}"
    )
    if args.capacity != 64:
        command += f" --capacity {args.capacity}"
    if args.llm_processes > 1:
        command += f" --llm-processes {args.llm_processes}"
    if args.repeat > 1:
        command += f" --repeat {args.repeat}"
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="masscer-throughput-"))
    stack = Stack()
    try:
        results = run(args, workdir, stack)
    except KeyboardInterrupt:
        print("interrupted; stopping workers and the fake server", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()  # ignores a second Ctrl-C or kill until everything is stopped
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # The run with the median efficiency stands for all of them; the others are listed.
    figures = sorted(results, key=lambda f: f.efficiency)[(len(results) - 1) // 2]
    rows = table(figures)
    if len(results) > 1:
        runs = ", ".join(f"{f.efficiency:.0%} ({f.wall_calls:.2f} s)" for f in results)
        rows.append(("runs", f"{len(results)}, median shown; efficiency of each: {runs}"))
    print_table("Generation throughput", rows)
    if not args.no_write:
        label = {"postgres": "PostgreSQL", "sqlite": "SQLite"}[figures.database]
        label += f", concurrency {args.concurrency}, capacity {args.capacity}"
        # A new subsection goes at the end of the section (after ### Findings, as it always has).
        update_benchmarks_md(
            markdown_block(f"### {label}", rows, command), f"### {label}", section_heading=SECTION, intro=SECTION_INTRO
        )
        print(f"\nupdated {BENCHMARKS_MD.name} ({SECTION}, ### {label})")
    inexact = [f for f in results if not f.exact]
    for f in inexact:
        print(f"\nNOT EXACT: {f.created} completions for N = {f.requested} ({f.status}): {f.error}")
    # Below the efficiency goal is a figure to read (it depends on the machine), not a failure;
    # a wrong number of completions is.
    return 1 if inexact else 0


if __name__ == "__main__":
    sys.exit(main())
