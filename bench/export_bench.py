"""Export benchmark: rows per second and memory of a streamed OpenAI JSONL export.

Run from the project root::

    .venv/bin/python bench/export_bench.py [--count 100000] [--database postgres|sqlite]
                                           [--formats openai-jsonl,alpaca,csv] [--no-write]

What it does, isolated from the development data (var/db.sqlite3 is never opened):

* a database of its own: PostgreSQL ``masscer_bench_export`` (dropped, recreated) or a SQLite
  file in a temporary directory, migrated in process;
* ``--count`` completions (default 100,000) made with ``bulk_create``, spread over 200 documents,
  every one assigned to the agent ``large``; the first tenth also to the agent ``small``;
* for each agent and format, a fresh child process exports the agent's approved completions with
  ``training.export.export_lines`` to a file, twice: once timed (rows/second) and once under
  ``tracemalloc`` (peak Python heap); the child also reports its peak RSS (``ru_maxrss``)
  before and after the export.

Memory is flat when the peak for ``large`` (N rows) is about the peak for ``small`` (N/10 rows).
The figures are printed and written to the "## Export" section of BENCHMARKS.md (one subsection
per database; other sections untouched).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import BENCHMARKS_MD, write_section

PG_URL = "postgres://postgres@127.0.0.1:5432/"
PG_DATABASE = "masscer_bench_export"
SECTION = "## Export"
SECTION_INTRO = """\
`bench/export_bench.py` exports an agent's approved completions as OpenAI fine-tuning JSONL
(every example checked by the format check, tokens counted with tiktoken; `--formats` adds the
others) from a database of its own, in a fresh process per run. "small" is a tenth of the rows
of "large": flat memory means their peaks are about equal. Peak heap is tracemalloc's peak
during the export; RSS is the process's peak resident size (`ru_maxrss`) after the export, and
the growth over the size before the export started (0: the export never raised the peak). The
rows/s figures below were taken while other test suites ran on the same two cores (load
average about 6), so they are lower bounds; the memory figures do not depend on that.
"""
WORDS = [
    "river", "bridge", "engine", "harbour", "valve", "turbine", "ledger", "invoice", "customer", "refund",
    "warranty", "policy", "sensor", "voltage", "battery", "charger", "antenna", "signal", "router", "firmware",
    "update", "backup", "archive", "meadow", "forest", "glacier", "volcano", "canyon", "desert", "island", "lagoon",
    "summit", "valley", "plateau", "delta", "protein", "enzyme", "membrane", "neuron", "synapse", "hormone",
    "vitamin"
]


def log(message: str) -> None:
    print(message, flush=True)


# --- the database ---------------------------------------------------------------------------


def prepare_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.sqlite3'}"
    import psycopg

    with psycopg.connect(PG_URL + "postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    return PG_URL + PG_DATABASE


def setup_django(database_url: str, workdir: Path) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["MASSCER_VAR_DIR"] = str(workdir)
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")
    os.environ["MASSCER_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


def fill(count: int) -> dict[str, int]:
    """The rows: a user, two agents, 200 documents with a chunk each, one job, `count` completions."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from agents.models import Agent
    from documents.models import Document
    from training.models import Assignment, Chunk, Completion, TrainingJob
    from workspaces.services import workspace_personal

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    workspace = workspace_personal(user=user)
    agents = {
        slug: Agent.objects.create(owner=user, workspace=workspace, name=slug, slug=slug, system_prompt="You help.")
        for slug in ("large", "small")
    }
    documents = Document.objects.bulk_create(
        Document(owner=user, workspace=workspace, title=f"Doc {n}", filename=f"{n}.txt", file="x", sha256="0" * 64,
                 status="ready")
        for n in range(200)
    )
    chunks = Chunk.objects.bulk_create(
        Chunk(document=document, index=0, text="text", token_count=1, locator={"pages": [1, 1]}, content_hash="x")
        for document in documents
    )
    job = TrainingJob.objects.create(owner=user, workspace=workspace, requested_count=count, model="bench",
                                     status="completed")
    rng = random.Random(7)
    batch = 5000
    started = time.perf_counter()
    for first in range(0, count, batch):
        with transaction.atomic():
            rows = Completion.objects.bulk_create(
                Completion(
                    job=job, chunk=chunks[n % len(chunks)], ordinal=n, question=sentence(rng, 14) + "?",
                    answer=sentence(rng, 60) + ".", evidence=sentence(rng, 12), status="approved", model="bench",
                )
                for n in range(first, min(first + batch, count))
            )
            links = [Assignment(completion=row, agent=agents["large"]) for row in rows]
            links += [Assignment(completion=row, agent=agents["small"]) for row in rows if row.ordinal % 10 == 0]
            Assignment.objects.bulk_create(links)
    log(f"made {count:,} completions in {time.perf_counter() - started:.1f} s")
    return {slug: agent.pk for slug, agent in agents.items()}


# --- one export, in a child process -------------------------------------------------------------


def export_child(agent_id: int, fmt: str, out: Path) -> dict[str, Any]:
    from agents.models import Agent
    from masscer.lib.tokens import count_tokens
    from training.export import ExportReport, export_lines

    agent = Agent.objects.get(pk=agent_id)
    count_tokens("warm up the encoding")  # loading tiktoken's tables is not the export's memory
    warm = export_lines(agent=agent, fmt=fmt, status="approved")
    next(warm, None)  # imports and the first query, then stop
    warm.close()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run(report: ExportReport) -> tuple[int, int]:
        rows, size = 0, 0
        with out.open("w", encoding="utf-8") as handle:
            for text in export_lines(agent=agent, fmt=fmt, status="approved", report=report):
                handle.write(text)
                size += len(text)
        rows = report.written["train"]
        return rows, size

    started = time.perf_counter()
    report = ExportReport()
    rows, size = run(report)
    seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    run(ExportReport())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rows": rows, "bytes": size, "seconds": seconds, "rows_per_second": rows / seconds if seconds else 0.0,
        "peak_heap": peak, "rss_before": rss_before * 1024, "rss_after": rss_after * 1024,
        "skipped": report.skipped_total,
    }


def run_child(database_url: str, workdir: Path, agent_id: int, fmt: str) -> dict[str, Any]:
    out = workdir / f"export-{agent_id}-{fmt}.out"
    command = [sys.executable, __file__, "--child", json.dumps({"agent": agent_id, "format": fmt, "out": str(out),
                                                                 "database": database_url, "workdir": str(workdir)})]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"export child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- BENCHMARKS.md ---------------------------------------------------------------------------------


def mib(size: float) -> str:
    return f"{size / 1048576:.1f} MiB"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 1024**3:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, {platform.system()}"


def markdown(kind: str, count: int, results: list[dict[str, Any]]) -> str:
    lines = [
        f"### {'PostgreSQL' if kind == 'postgres' else 'SQLite'}",
        "",
        f"{dt.date.today().isoformat()} · {machine()} · {count:,} completions in the database",
        "",
        "| agent | format | rows | file | rows/s | peak heap | peak RSS | RSS growth |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['agent']} | {r['format']} | {r['rows']:,} | {mib(r['bytes'])} | {r['rows_per_second']:,.0f} | "
            f"{mib(r['peak_heap'])} | {mib(r['rss_after'])} | {mib(r['rss_after'] - r['rss_before'])} |"
        )
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--formats", default="openai-jsonl", help="comma-separated export formats")
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        setup_django(spec["database"], Path(spec["workdir"]))
        print(json.dumps(export_child(spec["agent"], spec["format"], Path(spec["out"]))))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="masscer-export-bench-"))
    try:
        database_url = prepare_database(args.database, workdir)
        setup_django(database_url, workdir)
        agents = fill(args.count)
        from django.db import connections

        connections.close_all()
        results = []
        for fmt in args.formats.split(","):
            for slug in ("small", "large"):
                result = {"agent": slug, "format": fmt, **run_child(database_url, workdir, agents[slug], fmt)}
                results.append(result)
                log(
                    f"{slug:>5} {fmt}: {result['rows']:,} rows in {result['seconds']:.1f} s = "
                    f"{result['rows_per_second']:,.0f} rows/s; peak heap {mib(result['peak_heap'])}, "
                    f"peak RSS {mib(result['rss_after'])} (+{mib(result['rss_after'] - result['rss_before'])})"
                )
        block = markdown(args.database, args.count, results)
        print("\n" + block)
        if not args.no_write:
            write_section(block, block.splitlines()[0], section_heading=SECTION, intro=SECTION_INTRO)
            log(f"updated {BENCHMARKS_MD.name} ({SECTION})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if args.database == "postgres":
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(PG_URL + "postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
