"""CPU and round trips per model call on the llm worker's hot path (B1's limiting factor).

    .venv/bin/python bench/hotpath_bench.py [--database postgres|sqlite] [--count 300] [--profile 30]

The throughput benchmark (bench/throughput_bench.py) is bound by CPU on a 2-core machine:
every millisecond of CPU the llm worker spends around a model call is a millisecond the
other threads wait for the GIL. This benchmark measures that cost without the noise of
concurrency: it prepares a job of N completions on GeoTopo-komprimiert.pdf and runs its work
items one after another in this process (exactly what a worker thread does, minus Celery)
against the fake model server with no latency, then prints per model call: the CPU of this
process (thread CPU time), the SQL queries and the Redis commands (the shared rate limiter).
`--profile K` prints the K functions with the most cumulative CPU time (cProfile).

It uses a database of its own (masscer_hotpath on the local PostgreSQL, or a SQLite file under
a temporary directory), migrated on first use.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = PROJECT_ROOT.parent / "shared" / "samples" / "pdf" / "GeoTopo-komprimiert.pdf"
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import Stack, start_fake  # noqa: E402


def configure(args: argparse.Namespace, base_url: str, tmp: Path) -> None:
    if args.database == "postgres":
        os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/masscer_hotpath"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'hotpath.sqlite3'}"
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "masscer.settings",
            "CELERY_BROKER_URL": "memory://",
            "MASSCER_RATELIMIT_REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
            "MASSCER_LLM_RPM": "100000",
            "MASSCER_LLM_BASE_URL": base_url,
            "MASSCER_LLM_API_KEY": "bench",
            "MASSCER_LLM_MODEL": "fake-model",
            "MASSCER_LLM_MODE": "chat",
            "MASSCER_MEDIA_ROOT": str(tmp / "uploads"),
            "MASSCER_MAX_ACTIVE_JOBS_PER_USER": "1000",
        }
    )


def ensure_database(args: argparse.Namespace) -> None:
    if args.database != "postgres":
        return
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'masscer_hotpath'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE masscer_hotpath")


class RedisCounter:
    """Counts commands sent by redis-py in this process."""

    def __init__(self) -> None:
        self.commands = 0

    def install(self) -> None:
        from redis.client import Redis

        original = Redis.execute_command
        counter = self

        def counting(self: Redis, *args: object, **options: object) -> object:
            counter.commands += 1
            return original(self, *args, **options)

        Redis.execute_command = counting  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--count", "-n", type=int, default=300)
    parser.add_argument("--redis-db", type=int, default=8)
    parser.add_argument("--profile", type=int, default=0, help="print the top K functions by cumulative time")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key for --profile (e.g. tottime)")
    parser.add_argument("--profile-out", help="also write the cProfile data to this file")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of the middle work item")
    args = parser.parse_args()

    stack = Stack()
    try:
        with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
            base_url = start_fake(stack, Path(tmp) / "fake.log", ["--latency", "0"])
            configure(args, base_url, Path(tmp))
            ensure_database(args)
            return run(args)
    finally:
        stack.stop()


def run(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from agents.models import Agent
    from documents.services import document_create_from_path, document_extract
    from masscer.endpoint import llm_config
    from masscer.lib.llm import warm_up
    from training.generation import work_item_run
    from training.models import WorkItem
    from training.services import job_create, job_prepare
    from workspaces.services import workspace_personal

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(os.environ["MASSCER_RATELIMIT_REDIS_URL"]).flushdb()
    counter = RedisCounter()
    counter.install()

    user, _ = get_user_model().objects.get_or_create(username="hotpath")
    workspace = workspace_personal(user=user)
    agent, _ = Agent.objects.get_or_create(
        workspace=workspace, slug="hotpath", defaults={"name": "Hot path", "owner": user, "system_prompt": "-"}
    )
    document = document_create_from_path(owner=user, path=SAMPLE)
    document_extract(document_id=document.pk)
    job = job_create(owner=user, count=args.count, agents=[agent], documents=[document])
    job_prepare(job_id=job.pk)
    items = list(WorkItem.objects.filter(job=job).order_by("pk").values_list("pk", flat=True))

    # The SDK's client set-up and lazy imports happen once per worker process, not per call.
    warm_up(llm_config())
    # CPU time, not wall time: waits for PostgreSQL and the model cost the worker's GIL nothing.
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    cpu_times: list[float] = []
    queries: list[int] = []
    redis_commands: list[int] = []
    shown: list[str] = []
    wall_start = time.perf_counter()
    for item_id in items:
        reset_queries()
        before_redis = counter.commands
        with CaptureQueriesContext(connection) as captured:
            cpu = time.thread_time()
            if profiler:
                profiler.enable()
            work_item_run(item_id=item_id)
            if profiler:
                profiler.disable()
            cpu_times.append(time.thread_time() - cpu)
        queries.append(len(captured.captured_queries))
        if args.show_queries and item_id == items[len(items) // 2]:
            shown = [query["sql"][:160] for query in captured.captured_queries]
        redis_commands.append(counter.commands - before_redis)
    wall = time.perf_counter() - wall_start
    job.refresh_from_db()
    calls = job.calls
    total_cpu = sum(cpu_times)
    print(f"database {args.database}; job {job.status}, {job.created_count} of {job.requested_count} completions")
    print(f"work items {len(items)}, model calls {calls}, wall {wall:.2f} s")
    median_cpu, max_cpu = 1000 * statistics.median(cpu_times), 1000 * max(cpu_times)
    round_trips = (sum(queries) + sum(redis_commands)) / calls + 1
    print(f"CPU per model call      {1000 * total_cpu / calls:.1f} ms (this process only)")
    print(f"CPU per work item       median {median_cpu:.1f} ms, max {max_cpu:.1f} ms")
    print(f"SQL queries per call    {sum(queries) / calls:.1f} (median per work item {statistics.median(queries)})")
    print(f"Redis commands per call {sum(redis_commands) / calls:.1f}")
    print(f"round trips per call    {round_trips:.1f} (SQL + Redis + the model call; BEGIN/COMMIT not counted)")
    print(f"load average            {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    for sql in shown:
        print("  SQL", sql)
    if profiler:
        if args.profile_out:
            profiler.dump_stats(args.profile_out)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
