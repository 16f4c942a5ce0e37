"""Rate-limit adherence benchmark (B2): two llm worker processes against a model limited to RPM.

Run from the project root::

    .venv/bin/python bench/ratelimit_bench.py [--rpm 120] [--llm-processes 2] [--threads 8]
                                              [--count 1200] [--database postgres|sqlite]

Goal (issue #7): with the fake model server limited to 120 requests per minute and two llm
worker processes, the observed rate is at most 5 % above the limit and the total time within
10 % of the limit-bound time.

What it does, all isolated from the development data (var/db.sqlite3 is never opened):

* a database of its own: PostgreSQL ``masscer_bench_b2`` (dropped, recreated) or a SQLite file
  in a temporary directory, migrated with ``manage.py migrate`` in a subprocess;
* the shared Redis as the broker, under a key prefix of its own (``broker_env()``); the
  product's limiter lives in the same Redis (``MASSCER_RATELIMIT_REDIS_URL`` defaults to the
  broker) under the endpoint's key, which includes the fake's port, so it is fresh too;
* the fake OpenAI-compatible server (``python -m testing.fakellm --rpm RPM``): a
  sliding 60 s window, a 429 with Retry-After once RPM calls were admitted in the last 60 s;
* the product's limiter set to the provider's limit: ``MASSCER_LLM_RPM=RPM`` (and
  ``MASSCER_LLM_TPM`` with ``--tpm``; 0 = none, the fake does not count tokens);
* one ``ingest`` worker (prefork ×1) and ``--llm-processes`` llm workers (threads ×T each);
* ``manage.py train <source> --count N --agent bench --json``. The default document and
  N (GeoTopo-komprimiert.pdf, 117 pages, 104 chunks; N = 1200 at 10 pairs per call, 2 or
  more calls per chunk) make about 220 model calls: about 110 s at 120 per minute.

Figures, from the fake's call log (``started`` is stamped when a request arrives, just before
the fake admits or rejects it):

* observed rate: the most admitted calls that started within any 60 s (the fake's own
  definition: a half-open window ``(t - 60, t]``), and the mean rate over the call window,
  ``(calls - 1) / (last start - first start)`` per minute (n calls make n - 1 intervals);
* percent above the limit: ``max window / RPM - 1`` (the goal: at most +5 %);
* limit-bound time: the product's request GCRA has a burst of 1 (the first call needs no
  wait, every later one waits for its 60/RPM slot; no initial burst is allowed), so the last
  of n calls can start ``(n - 1) × 60 / RPM`` after the first. The naive ``n × 60 / RPM``
  is shown too. A sliding-window provider would let RPM calls through at once; the product
  does not use that burst (see BENCHMARKS.md). Measured time = first → last call start;
  ratio = measured / bound (goal: within ±10 %; the product spaces its slots
  ``ratelimit.REQUEST_HEADROOM``, 2 %, wider than the limit, so about 1.02 is expected);
  the job's own started → finished is shown too;
* 429s the fake's rate window answered (goal 0), the Retry-After values the workers were
  given (from their logs), and generate tasks handed back (a slot further away than
  MASSCER_RATELIMIT_MAX_WAIT, or a 429); with ``--probe-429 S`` the fake answers one call
  with a 429 and Retry-After S part-way through, and the table says whether any call started
  inside that pause; ``--limiter-rpm 0`` runs the control without the product's limit;
* the per-worker split of the calls (both workers did work): each llm worker has an API key
  of its own (``sk-bench-llm0``, ...; the limiter's key is the endpoint's, not the API key's)
  and the fake's log says which key made each call; the generate tasks each worker finished
  come from its log.

The figures are printed and written to the "## Rate-limit adherence (B2)" section of
BENCHMARKS.md (one subsection per database and kind of run, other sections untouched). Exit
status 1 when the job does not make exactly N completions or a goal is missed.

Everything the benchmark starts (workers, fake server) is stopped on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import sys
import tempfile
import threading
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

from masscer.lib import ratelimit
from testing.fakellm import FakeLLMClient
from testing.processes import REDIS_HOST, REDIS_PORT, broker_env, child_env, port_open, start_worker

DEFAULT_SOURCE = PROJECT_ROOT / ".." / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
PG_DATABASE = "masscer_bench_b2"
SECTION = "## Rate-limit adherence (B2)"
WINDOW = 60.0
GOAL_ABOVE = 0.05  # observed rate at most 5 % above the limit
GOAL_TIME = 0.10  # total time within 10 % of the limit-bound time
RACE = 0.05  # a call sent this soon after a 429's answer left the fake could not have known of it

# What job_stats reads of each of the job's work items.
ITEM_FIELDS = ("quota", "made", "calls", "attempts", "status")

_RETRY_LINE = re.compile(r"generate_task\[[^\]]+\] retry: Retry in")


def redis_broker() -> dict[str, str]:
    if not port_open(REDIS_HOST, REDIS_PORT):
        raise BenchError(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    return broker_env()  # the shared Redis under a key prefix of this run's own


# --- measurement ---------------------------------------------------------------------------------


def max_in_window(starts: list[float], window: float = WINDOW) -> tuple[int, float]:
    """The most calls that started within any `window` seconds, and when that window began.

    A call at t counts in the windows (t - window, t]: calls i..j share one when
    t_j - t_i < window (the fake forgets a call once `window` seconds have passed).
    """
    times = sorted(starts)
    best, best_at = 0, times[0] if times else 0.0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + window, lo=i) - i
        if count > best:
            best, best_at = count, start
    return best, best_at


@dataclass
class Figures:
    database: str
    rpm: int
    limiter_rpm: int
    tpm: int
    llm_processes: int
    threads: int
    latency: float
    requested: int
    status: str
    created: int
    error: str
    calls: int  # admitted by the fake
    answered: int  # of them answered 200
    job_calls: int  # the job's own counter
    rejected: int  # 429s the fake answered
    retry_after: list[float]  # the Retry-After values of those 429s
    handed_back: int  # generate tasks retried by Celery (rate-limit hand-backs and 429s)
    max_window: int
    max_window_at: float  # seconds after the first call
    first_start: float
    last_start: float
    last_end: float
    job_wall: float  # job started_at -> finished_at
    per_worker: list[tuple[str, int | None, int]]  # (worker, calls, tasks)
    burst: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    probe: dict[str, Any] | None = None

    @property
    def interval(self) -> float:
        return 60.0 / self.rpm

    @property
    def span(self) -> float:
        return self.last_start - self.first_start

    @property
    def mean_rate(self) -> float:
        return (self.calls - 1) / self.span * 60 if self.span > 0 else 0.0

    @property
    def above(self) -> float:
        return self.max_window / self.rpm - 1

    @property
    def bound(self) -> float:
        return max(0, self.calls - self.burst) * self.interval

    @property
    def naive_bound(self) -> float:
        return self.calls * self.interval

    @property
    def ratio(self) -> float:
        return self.span / self.bound if self.bound > 0 else 0.0

    @property
    def completed(self) -> bool:
        return self.status == "completed" and self.created == self.requested

    @property
    def meets_rate(self) -> bool:
        return self.above <= GOAL_ABOVE

    @property
    def meets_time(self) -> bool:
        return abs(self.ratio - 1) <= GOAL_TIME


def worker_key(name: str) -> str:
    return f"sk-bench-{name}"


def worker_split(logs: list[tuple[str, Path]], calls: list[dict[str, Any]]) -> list[tuple[str, int | None, int]]:
    """(worker, admitted calls it made, generate tasks it finished): calls by the API key the
    fake saw (None if its log does not keep keys), tasks from the worker's log."""
    split: list[tuple[str, int | None, int]] = []
    for name, log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        tasks = len(re.findall(r"generate_task\[[^\]]+\] succeeded", text))
        made = (
            sum(1 for c in calls if c.get("bearer") == worker_key(name)) if any("bearer" in c for c in calls) else None
        )
        split.append((name, made, tasks))
    return split


def retry_afters(logs: list[tuple[str, Path]]) -> list[float]:
    """The Retry-After of every 429 a worker was answered, from its retry log lines."""
    found = []
    for _, log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        found += [float(v) for v in re.findall(r"retry: Retry in .*?\(429\); retry after ([\d.]+) s", text)]
    return found


def handed_back(logs: list[tuple[str, Path]]) -> int:
    return sum(len(_RETRY_LINE.findall(log.read_text(errors="replace"))) for _, log in logs if log.exists())


def measure(
    args: argparse.Namespace,
    calls: list[dict[str, Any]],
    stats: dict[str, Any],
    logs: list[tuple[str, Path]],
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
    probe: dict[str, Any] | None,
) -> Figures:
    generation = [c for c in calls if c.get("endpoint") in ("chat", "completion")]
    # Admitted: past the fake's rate window (it counts them), whatever the answer (a scripted
    # 429 of --probe-429 included); rejected: answered 429 by the rate window itself.
    admitted = [c for c in generation if not c.get("rejected")]
    rejected = [c for c in generation if c.get("rejected")]
    if len(admitted) < 2:
        raise BenchError(f"the fake admitted {len(admitted)} model calls; job: {json.dumps(stats)[:2000]}")
    starts = sorted(c["started"] for c in admitted)
    peak, peak_at = max_in_window(starts)
    started, finished = stats["started_at"], stats["finished_at"]
    return Figures(
        database=args.database,
        rpm=args.rpm,
        limiter_rpm=args.limiter_rpm,
        tpm=args.tpm,
        llm_processes=args.llm_processes,
        threads=args.threads,
        latency=args.latency,
        requested=args.count,
        status=stats["status"],
        created=stats["created_count"],
        error=stats.get("error") or "",
        calls=len(admitted),
        answered=sum(1 for c in admitted if c.get("status") == 200),
        job_calls=stats["calls"],
        rejected=len(rejected),
        retry_after=retry_afters(logs),
        handed_back=handed_back(logs),
        max_window=peak,
        max_window_at=peak_at - starts[0],
        first_start=starts[0],
        last_start=starts[-1],
        last_end=max(c["ended"] or c["started"] for c in admitted),
        job_wall=(finished - started) if started and finished else 0.0,
        per_worker=worker_split(logs, admitted),
        burst=getattr(ratelimit, "REQUEST_BURST", 1),
        load_before=loads[0],
        load_after=loads[1],
        probe=probe,
    )


def probe_result(calls: list[dict[str, Any]], pause: float) -> dict[str, Any] | None:
    """Was the scripted 429's Retry-After honoured? Calls that started after its answer left the fake.

    The pause can only begin once a worker has read the 429 (and called `block`); a call whose
    slot comes within RACE seconds of the answer is counted apart, as sent before anyone knew.
    """
    scripted = next((c for c in calls if c.get("behaviour") == "http_error" and c.get("status") == 429), None)
    if scripted is None:
        return None
    at = scripted["ended"] or scripted["started"]
    offsets = sorted(c["started"] - at for c in calls if c is not scripted and c["started"] >= at)
    return {
        "pause": pause,
        "racing": sum(1 for o in offsets if o < RACE),
        "inside": sum(1 for o in offsets if RACE <= o < pause),
        "next_after": next((o for o in offsets if o >= RACE), None),
    }


def table(f: Figures) -> list[tuple[str, str]]:
    rate_verdict = "meets" if f.meets_rate else "MISSES"
    time_verdict = "meets" if f.meets_time else "MISSES"
    limit = f"{f.limiter_rpm} requests/min" if f.limiter_rpm else "off (no requests limit)"
    limit += f", {f.tpm} tokens/min" if f.tpm else ""
    workers = "; ".join(
        f"{name}: {'?' if calls is None else calls} calls, {tasks} tasks" for name, calls, tasks in f.per_worker
    )
    retry_after = ""
    if f.retry_after:
        retry_after = f"; Retry-After seen by the workers: {min(f.retry_after):g}–{max(f.retry_after):g} s"
    rows = [
        ("database", f.database),
        ("limit", f"fake server {f.rpm} requests/min (sliding 60 s window); product limiter {limit}"),
        ("llm workers", f"{f.llm_processes} processes × {f.threads} threads (Redis broker and limiter)"),
        ("model latency", f"{f.latency:g} s per call (fake server)"),
        ("job", f"{f.status}; {f.created} of {f.requested} completions"),
        ("calls made", f"{f.calls} admitted by the fake, {f.answered} answered 200 (job counter {f.job_calls})"),
        ("429s answered", f"{f.rejected} by the fake's rate window{retry_after}"),
        (
            "handed back",
            f"{f.handed_back} generate tasks retried later (a slot beyond the worker's max wait, or a 429)",
        ),
        (
            "observed rate (peak)",
            (
                f"{f.max_window} calls in the busiest 60 s window (starting {f.max_window_at:.1f} s "
                f"after the first call) = {f.above:+.1%} vs the limit ({rate_verdict} the ≤ +{GOAL_ABOVE:.0%} goal)"
            ),
        ),
        (
            "observed rate (mean)",
            f"{f.mean_rate:.1f} calls/min = ({f.calls} − 1) calls / {f.span:.2f} s between first and last start",
        ),
        (
            "limit-bound time",
            (
                f"{f.bound:.2f} s = ({f.calls} − {f.burst}) × {f.interval:g} s (GCRA burst {f.burst}: the first call "
                f"is free); naive {f.calls} × {f.interval:g} = {f.naive_bound:.2f} s"
            ),
        ),
        (
            "measured time",
            f"{f.span:.2f} s first → last call start; {f.last_end - f.first_start:.2f} s to the last end",
        ),
        (
            "ratio",
            (
                f"{f.ratio:.3f} measured / bound ({time_verdict} the ±{GOAL_TIME:.0%} goal); "
                f"{f.span / f.naive_bound:.3f} of the naive bound"
            ),
        ),
        ("job started→finished", f"{f.job_wall:.2f} s (extraction, chunking and the last call's latency included)"),
        ("per worker", workers or "unknown"),
    ]
    if f.probe is not None:
        probe = f.probe
        after = "no later call" if probe["next_after"] is None else f"the next {probe['next_after']:.2f} s after it"
        rows.append(
            (
                "Retry-After probe",
                (
                    f"one scripted 429 with Retry-After {probe['pause']:g} s part-way: {probe['inside']} calls "
                    f"started inside the pause, {after} ({probe['racing']} sent within {RACE * 1000:.0f} ms of "
                    "the 429's answer, before a worker had read it)"
                ),
            )
        )
    rows.append(
        (
            "load average",
            f"{'/'.join(f'{x:.2f}' for x in f.load_before)} before, {'/'.join(f'{x:.2f}' for x in f.load_after)} after",
        )
    )
    return rows


# --- BENCHMARKS.md -----------------------------------------------------------------------------


SECTION_INTRO = """\
`bench/ratelimit_bench.py`: `manage.py train` on GeoTopo-komprimiert.pdf (N = 1200, about 220
model calls) with two llm worker processes (Redis broker, threads) sharing the product's Redis
limiter, set to the provider's limit (`MASSCER_LLM_RPM=120`), against the fake model server
limited to 120 requests per minute (sliding 60 s window, 429 + Retry-After beyond it). Goals:
observed rate at most 5 % above the limit; time within 10 % of the limit-bound time.
"""


def label_for(f: Figures) -> str:
    """The subsection of a run: the database, and what sets it apart from the plain B2 run."""
    label = {"postgres": "PostgreSQL", "sqlite": "SQLite"}[f.database]
    if f.limiter_rpm != f.rpm:
        label += f", product limiter at {f.limiter_rpm} rpm" if f.limiter_rpm else ", control: product limiter off"
    if f.probe is not None:
        label += ", Retry-After probe"
    return label


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, stack: Stack) -> Figures:
    source = Path(args.source).resolve()
    if not source.is_file():
        raise BenchError(f"no such source file: {source}")
    logs_dir = workdir / "logs"
    logs_dir.mkdir()
    (workdir / "var").mkdir()
    database_url = postgres_database(PG_DATABASE) if args.database == "postgres" else sqlite_database(workdir)
    broker = redis_broker()
    fake_url = start_fake(
        stack, logs_dir / "fake.log", ["--rpm", str(args.rpm), "--latency", str(args.latency), "--capacity", "64"]
    )
    env = child_env(
        **bench_env(database_url, fake_url, workdir),
        **broker,
        MASSCER_LLM_RPM=str(args.limiter_rpm),
        MASSCER_LLM_TPM=str(args.tpm),
    )
    env.pop("MASSCER_RATELIMIT_REDIS_URL", None)  # the limiter follows the broker, as deployed
    print(f"database {database_url}, broker {broker['CELERY_BROKER_URL']}, fake {fake_url}", file=sys.stderr)
    migrate(env)

    ingest_log = logs_dir / "ingest.log"
    ingest = stack.add(
        "ingest",
        start_worker(env, queues="ingest", pool="prefork", concurrency=1, name="b2-ingest", log_path=ingest_log),
    )
    llm_logs: list[tuple[str, Path]] = []
    workers = []
    for i in range(args.llm_processes):
        log = logs_dir / f"llm{i}.log"
        worker_env = {**env, "MASSCER_LLM_API_KEY": worker_key(f"llm{i}")}  # tells its calls apart
        process = start_worker(
            worker_env, queues="llm", pool="threads", concurrency=args.threads, name=f"b2-llm{i}", log_path=log
        )
        workers.append((log, stack.add(f"llm{i}", process)))
        llm_logs.append((f"llm{i}", log))
    wait_for_ready(ingest_log, ingest, "ingest")
    for log, process in workers:
        wait_for_ready(log, process, "llm")

    client = FakeLLMClient(fake_url, timeout=60)
    client.reset()
    probe_timer = None
    if args.probe_429:
        probe_timer = threading.Timer(
            args.probe_at,
            client.script,
            args=([{"kind": "http_error", "status": 429, "retry_after": args.probe_429}],),
        )
    print(f"train {source.name} --count {args.count} ...", file=sys.stderr)
    load_before = os.getloadavg()
    began = time.monotonic()
    if probe_timer is not None:
        probe_timer.start()
    try:
        trained = train(source, args.count, args.timeout, env)
    finally:
        if probe_timer is not None:
            probe_timer.cancel()
    load_after = os.getloadavg()
    print(f"train returned {trained.returncode} after {time.monotonic() - began:.1f} s", file=sys.stderr)
    summary = train_summary(trained, workers[0][0])
    stats = job_stats(summary["job_id"], ITEM_FIELDS, env)
    calls = client.calls(brief=True)
    if args.dump:
        Path(args.dump).write_text(json.dumps({"summary": summary, "stats": stats, "calls": calls}, default=str))
    if args.keep:
        time.sleep(1)  # the workers' last log lines
    probe = probe_result(calls, args.probe_429) if args.probe_429 else None
    return measure(args, calls, stats, llm_logs, (load_before, load_after), probe)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as it is written, and every option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    add = parser.add_argument
    add("--rpm", type=int, default=120, help="requests per minute: the fake's limit and the product's MASSCER_LLM_RPM")
    add(
        "--limiter-rpm",
        type=int,
        default=None,
        help="the product's MASSCER_LLM_RPM when it should differ from --rpm (0 = limiter off: a control run)",
    )
    add("--tpm", type=int, default=0, help="the product's MASSCER_LLM_TPM (0 = none; the fake does not count tokens)")
    add("--llm-processes", type=int, default=2, help="llm worker processes sharing the limiter")
    add("--threads", type=int, default=8, help="threads of each llm worker")
    add("--latency", type=float, default=0.5, help="seconds per model call at the fake")
    add("--count", "-n", type=int, default=1200, help="completions to make (N); 1200 ≈ 220 calls on the default source")
    add("--database", choices=("postgres", "sqlite"), default="postgres", help=f"postgres uses {PG_DATABASE}")
    add("--source", default=str(DEFAULT_SOURCE), help="document to train with")
    add("--probe-429", type=float, default=0, metavar="S", help="script one 429 with Retry-After S seconds")
    add("--probe-at", type=float, default=30, help="seconds after `manage.py train` starts to script the --probe-429")
    add("--timeout", type=float, default=900, help="give up on the job after this long")
    add("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    add("--keep", action="store_true", help="keep the temporary directory (worker logs)")
    add("--dump", help="write the raw call log and job stats to this JSON file")
    args = parser.parse_args(argv)
    if args.limiter_rpm is None:
        args.limiter_rpm = args.rpm
    if (
        min(args.rpm, args.llm_processes, args.threads, args.count) < 1
        or min(args.latency, args.tpm, args.limiter_rpm) < 0
    ):
        parser.error("rpm, llm-processes, threads and count must be positive; latency, tpm, limiter-rpm not negative")
    return args


def command_line(args: argparse.Namespace) -> str:
    command = (
        f".venv/bin/python bench/ratelimit_bench.py --rpm {args.rpm} --llm-processes {args.llm_processes} "
        f"--threads {args.threads} --count {args.count} --database {args.database}"
    )
    if args.limiter_rpm != args.rpm:
        command += f" --limiter-rpm {args.limiter_rpm}"
    if args.tpm:
        command += f" --tpm {args.tpm}"
    if args.latency != 0.5:
        command += f" --latency {args.latency:g}"
    if args.probe_429:
        command += f" --probe-429 {args.probe_429:g} --probe-at {args.probe_at:g}"
    return command


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="masscer-ratelimit-"))
    stack = Stack()
    try:
        figures = run(args, workdir, stack)
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

    rows = table(figures)
    print_table("Rate-limit adherence", rows)
    if not args.no_write:
        label = label_for(figures)
        # A new subsection goes before the findings (### Findings stays last).
        update_benchmarks_md(
            markdown_block(f"### {label}", rows, command_line(args)),
            f"### {label}",
            section_heading=SECTION,
            intro=SECTION_INTRO,
            before="### Findings",
        )
        print(f"\nupdated {BENCHMARKS_MD.name} ({SECTION}, ### {label})")
    if not figures.completed:
        print(f"\nJOB NOT COMPLETE: {figures.created} of {figures.requested} ({figures.status}): {figures.error}")
    ok = figures.completed and figures.meets_rate and figures.meets_time
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
