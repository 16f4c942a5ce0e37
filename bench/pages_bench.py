"""Pages at scale (B4): latency of the review queue, the completions lists and the agent dashboard.

Run from the project root (PostgreSQL on 127.0.0.1:5432 and Debian's ``wrk``; run
``bash scripts/ensure_wrk.sh`` first if ``wrk`` is missing, or ``make bench-pages``)::

    .venv/bin/python bench/pages_bench.py [--count 100000] [--small 1000] [--reseed]
                                          [--duration 15] [--explain] [--no-write]

What it does, isolated from the development data:

* a database of its own, PostgreSQL ``masscer_bench_pages``, created and migrated by the script.
  It is seeded once and reused by later runs (``--reseed`` drops it and starts over); later
  runs still migrate it, so new indexes reach it. Two workspaces share it:

  - "Acme support" (alice admin, bob reviewer, dave member): ``--count`` completions (default
    100,000) from 20 jobs of 5,000 over 200 documents and 20 conversations (5 chunks each,
    about 2,500 characters of text per chunk, the evidence quote taken from it), created over
    120 days; statuses about 40 % pending, 45 % approved (8 % of them edited), 15 % rejected,
    reviewed by alice or bob; 3 % near-duplicates of the completion before them
    (``duplicate_of`` set). Five agents: support (half the completions), sales (15 %),
    billing (5 %), onboarding (1 %) and a new one with none;
  - "Small team" (carol admin): the same shape with ``--small`` completions (default 1,000),
    for the query counts at two sizes in one database.

  Rows are written with COPY, then ``VACUUM ANALYZE`` (what autovacuum would have done).
* gunicorn on loopback as production runs it (``DJANGO_DEBUG=0``, requests carry
  ``X-Forwarded-Proto: https`` as the TLS proxy would): gthread workers, ``--workers`` x
  ``--server-threads`` (default 2 x 4 for two cores); alice logs in through the login form.
* for each page, ``wrk -t2 -c8 -d15s`` with a Lua script that prints p50/p95/p99, the
  requests/s and the responses that were not 200;
* in process, against the same database: each page's queries (count, summed query time, and
  the wall time of the request) for carol (``--small`` rows) and alice (``--count`` rows),
  through Django's test client and ``CaptureQueriesContext`` (median of 5 requests).
  ``--explain`` prints EXPLAIN ANALYZE of the queries slower than ``--explain-ms``.

The table is printed and written to the "## Pages at scale (B4)" section of BENCHMARKS.md
(its "### PostgreSQL, wrk -c<connections>" subsection; the rest of the section is left alone).
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import socket
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

from benchlib import BENCHMARKS_MD, write_section

PG_URL = "postgres://postgres@127.0.0.1:5432/"
PG_DATABASE = "masscer_bench_pages"
SECTION = "## Pages at scale (B4)"
SECTION_INTRO = """\
`bench/pages_bench.py` seeds a PostgreSQL database of its own (reused between runs; `--reseed`
starts over), serves it with gunicorn on loopback as production does (`DJANGO_DEBUG=0`, the
proxy's `X-Forwarded-Proto: https`), logs alice in through the login form and runs `wrk` against
each page (a Lua script reports p50/p95/p99 and the responses that were not 200). The query
columns come from Django's test client in process against the same database
(`CaptureQueriesContext`, median of 5 requests): carol's workspace holds the small number of
completions, alice's the large one, so equal query counts at both sizes show that no page runs a
query per row.
"""
PASSWORD = "bench-pages-password"  # noqa: S105 - a throwaway benchmark database
SECRET_KEY = "bench-pages-" + "k" * 52
WORDS = [
    "river", "bridge", "engine", "harbour", "valve", "turbine", "ledger", "invoice", "customer", "refund",
    "warranty", "policy", "sensor", "voltage", "battery", "charger", "antenna", "signal", "router", "firmware",
    "update", "backup", "archive", "meadow", "forest", "glacier", "volcano", "canyon", "desert", "island",
    "lagoon", "summit", "valley", "plateau", "delta", "protein", "enzyme", "membrane", "neuron", "synapse",
    "hormone", "vitamin", "account", "password", "login", "session", "export", "import", "billing", "plan",
    "upgrade", "downgrade", "seat", "license", "contract", "renewal",
]
DAYS = 120
PER_JOB = 5000
CHUNKS_PER_SOURCE = 5
# (slug, name, which completions: ordinal n of the whole workspace -> assigned?)
AGENTS: list[tuple[str, str, Any]] = [
    ("support", "Support", lambda n: n % 2 == 0),
    ("sales", "Sales", lambda n: n % 20 in (1, 3, 4)),
    ("billing", "Billing", lambda n: n % 20 == 7),
    ("onboarding", "Onboarding", lambda n: n % 100 == 11),
    ("internal", "Internal", lambda n: False),
]


def log(message: str) -> None:
    print(message, flush=True)


# --- the database ---------------------------------------------------------------------------------


def prepare_database(reseed: bool) -> bool:
    """Create the database if it is missing (drop it first with `reseed`); True if it was there."""
    import psycopg

    with psycopg.connect(PG_URL + "postgres", autocommit=True) as connection:
        if reseed:
            connection.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        return bool(exists)


def server_env(workdir: Path) -> dict[str, str]:
    """The environment of the app, in process and under gunicorn: production settings on loopback."""
    return {
        "DATABASE_URL": PG_URL + PG_DATABASE,
        "MASSCER_VAR_DIR": str(workdir),
        "CELERY_BROKER_URL": "memory://",
        "DJANGO_SETTINGS_MODULE": "masscer.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "MASSCER_LOG_LEVEL": "WARNING",
    }


def setup_django(workdir: Path) -> None:
    os.environ.update(server_env(workdir))
    import django

    django.setup()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


def chunk_text(rng: random.Random) -> str:
    paragraphs = [sentence(rng, rng.randint(60, 90)) + "." for _ in range(4)]
    return "\n\n".join(paragraphs)


def evidence_of(rng: random.Random, text: str) -> str:
    words = text.split()
    start = rng.randrange(0, len(words) - 12)
    return " ".join(words[start : start + 12])


def next_id(cursor: Any, table: str) -> int:
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")  # noqa: S608 - our table names
    return int(cursor.fetchone()[0])


def reset_sequence(cursor: Any, table: str) -> None:
    cursor.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"  # noqa: S608
    )


@dataclass
class Seeded:
    user: str
    count: int
    agent_ids: dict[str, int]


def seed_workspace(*, name: str, admin: str, others: dict[str, str], count: int, seed: int) -> Seeded:
    """One workspace with documents, conversations, jobs, `count` completions and five agents."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from agents.models import Agent
    from conversations.models import Conversation
    from documents.models import Document
    from training.models import Chunk, TrainingJob
    from training.validation import question_key
    from workspaces.models import Membership, Workspace

    rng = random.Random(seed)
    user_model = get_user_model()
    people = {username: user_model.objects.create_user(username, password=PASSWORD) for username in [admin, *others]}
    workspace = Workspace.objects.create(name=name)
    Membership.objects.bulk_create(
        Membership(workspace=workspace, user=people[username], role=role)
        for username, role in {admin: Membership.Role.ADMIN, **others}.items()
    )
    owner = people[admin]
    reviewers = [p.pk for u, p in people.items() if u == admin or others.get(u) == Membership.Role.REVIEWER]
    agents = {
        slug: Agent.objects.create(owner=owner, workspace=workspace, name=label, slug=slug,
                                   system_prompt=f"You are {label}. Answer from the material.")
        for slug, label, _ in AGENTS
    }
    jobs_total = max(1, -(-count // PER_JOB))
    documents = Document.objects.bulk_create(
        Document(owner=owner, workspace=workspace, title=f"{sentence(rng, 3)} manual {n}", filename=f"manual-{n}.pdf",
                 file=f"documents/bench-{n}.pdf", kind="pdf", sha256=f"{n:064x}", status=Document.Status.READY,
                 page_count=20, token_count=2500, chunk_count=CHUNKS_PER_SOURCE)
        for n in range(max(2, count // 500))
    )
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=owner, workspace=workspace, title=f"Chat about {sentence(rng, 2).lower()} {n}",
                     source_format="openai")
        for n in range(max(1, count // 5000))
    )
    chunks: list[Chunk] = []
    for document in documents:
        chunks += [Chunk(document=document, index=i, text=chunk_text(rng), token_count=500,
                         locator={"pages": [4 * i + 1, 4 * i + 4]}, content_hash=secrets.token_hex(8))
                   for i in range(CHUNKS_PER_SOURCE)]
    for conversation in conversations:
        chunks += [Chunk(conversation=conversation, index=i, text=chunk_text(rng), token_count=500,
                         locator={"messages": [6 * i, 6 * i + 5]}, content_hash=secrets.token_hex(8))
                   for i in range(CHUNKS_PER_SOURCE)]
    chunks = Chunk.objects.bulk_create(chunks)
    # Each job trains on a tenth of the sources (documents and conversations alike).
    per_job = max(1, len(chunks) // max(1, jobs_total))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS)
    step = dt.timedelta(days=DAYS) / (count + 1)
    jobs = []
    for j in range(jobs_total):
        made = min(PER_JOB, count - j * PER_JOB)
        job = TrainingJob.objects.create(
            owner=owner, workspace=workspace, requested_count=made, created_count=made, model="gpt-4o-mini",
            status=TrainingJob.Status.COMPLETED, calls=made // 8, prompt_tokens=made * 700,
            completion_tokens=made * 90, chunks_total=per_job, chunks_done=per_job,
        )
        jobs.append(job)
    with transaction.atomic(), connection.cursor() as cursor:
        first = next_id(cursor, "training_completion")
        first_link = next_id(cursor, "training_assignment")
        links = 0
        raw = cursor.cursor  # psycopg's own cursor, for COPY
        columns = ("id, job_id, chunk_id, ordinal, question, question_key, answer, evidence, status, model, "
                   "redacted, edited, original_question, original_answer, reviewed_by_id, reviewed_at, "
                   "duplicate_of_id, created_at")
        assigned: list[tuple[int, int, int, str, dt.datetime]] = []
        with raw.copy(f"COPY training_completion ({columns}) FROM STDIN") as copy:
            previous_question = ""
            for n in range(count):
                j = n // PER_JOB
                ordinal = n % PER_JOB
                chunk = chunks[(j * per_job + ordinal % per_job) % len(chunks)]
                created = start + step * (n + 1)
                pk = first + n
                duplicate = n % 33 == 5 and n > 0
                question = (previous_question.rstrip("?") + " exactly?") if duplicate else sentence(rng, 12) + "?"
                answer = sentence(rng, rng.randint(35, 70)) + "."
                roll = rng.random()
                status = "pending" if roll < 0.40 else "approved" if roll < 0.85 else "rejected"
                edited = status == "approved" and rng.random() < 0.08
                reviewed_by = rng.choice(reviewers) if status != "pending" else None
                reviewed_at = created + dt.timedelta(hours=rng.randint(1, 72)) if reviewed_by else None
                copy.write_row((
                    pk, jobs[j].pk, chunk.pk, ordinal, question, question_key(question), answer,
                    evidence_of(rng, chunk.text), status,
                    "gpt-4o-mini" if j % 4 else "gemma-3-270m", False, edited,
                    sentence(rng, 12) + "?" if edited else "", sentence(rng, 40) + "." if edited else "",
                    reviewed_by, reviewed_at, pk - 1 if duplicate else None, created,
                ))
                previous_question = question
                for slug, _, wants in AGENTS:
                    if wants(n):
                        assigned.append((first_link + links, pk, agents[slug].pk, "retrieve", created))
                        links += 1
        links_sql = "COPY training_assignment (id, completion_id, agent_id, rule, tags, created_at) FROM STDIN"
        with raw.copy(links_sql) as copy:
            for link_id, completion_id, agent_id, rule, created in assigned:
                copy.write_row((link_id, completion_id, agent_id, rule, "[]", created))
        reset_sequence(cursor, "training_completion")
        reset_sequence(cursor, "training_assignment")
    for j, job in enumerate(jobs):
        job.documents.set(documents[j % len(documents) :: max(1, jobs_total)][:10])
        job.agents.set([a for slug, a in agents.items() if slug != "internal"])
    for j, job in enumerate(jobs):
        TrainingJob.objects.filter(pk=job.pk).update(
            created_at=start + step * j * PER_JOB, started_at=start + step * j * PER_JOB,
            finished_at=start + step * min(count, (j + 1) * PER_JOB),
        )
    return Seeded(user=admin, count=count, agent_ids={slug: a.pk for slug, a in agents.items()})


def seeded(count: int, small: int) -> dict[str, Seeded] | None:
    """What an earlier run left, if it has the same sizes."""
    from agents.models import Agent
    from training.models import Completion

    found = {}
    for scale, user, want in (("large", "alice", count), ("small", "carol", small)):
        have = Completion.objects.filter(job__owner__username=user).count()
        if have != want:
            return None
        agents = Agent.objects.filter(owner__username=user).values_list("slug", "pk")
        found[scale] = Seeded(user=user, count=have, agent_ids=dict(agents))
    return found


def fill(count: int, small: int) -> dict[str, Seeded]:
    from django.db import connection

    from workspaces.models import Membership

    started = time.perf_counter()
    large = seed_workspace(name="Acme support", admin="alice", count=count, seed=7,
                           others={"bob": Membership.Role.REVIEWER, "dave": Membership.Role.MEMBER})
    small_ = seed_workspace(name="Small team", admin="carol", others={}, count=small, seed=8)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    log(f"seeded {count:,} + {small:,} completions in {time.perf_counter() - started:.1f} s")
    return {"large": large, "small": small_}


# --- the pages -------------------------------------------------------------------------------------


@dataclass
class Page:
    key: str
    label: str
    path: str  # with {support} for the big agent's id


PAGES = [
    Page("review", "Review queue (pending), page 1", "/jobs/review/"),
    Page("review-deep", "Review queue (pending), page 200", "/jobs/review/?page=200"),
    Page("list", "Completions list (web, all statuses), page 1", "/jobs/review/?status=all"),
    Page("list-deep", "Completions list (web, all statuses), page 200", "/jobs/review/?status=all&page=200"),
    Page("api", "Completions list (API), first 50", "/api/completions?limit=50"),
    Page("api-deep", "Completions list (API), offset 10,000", "/api/completions?limit=50&offset={offset}"),
    Page("agents", "Agents (every agent with its counts)", "/agents/"),
    Page("agent", "Agent dashboard (support), page 1", "/agents/{support}/"),
    Page("agent-deep", "Agent dashboard (support), page 200", "/agents/{support}/?page=200"),
]


def url_of(page: Page, data: Seeded) -> str:
    # Deep web pages past the end show the last page; the API's offset stays inside the small workspace.
    return page.path.format(support=data.agent_ids["support"], offset=min(10_000, data.count // 2))


def measure_queries(pages: list[Page], data: dict[str, Seeded], runs: int = 5) -> dict[tuple[str, str], dict[str, Any]]:
    """Per page and scale: queries per request, their summed time and the request's wall time (medians)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    results: dict[tuple[str, str], dict[str, Any]] = {}
    for scale, seeded_ in data.items():
        client = Client()
        client.force_login(get_user_model().objects.get(username=seeded_.user))
        for page in pages:
            url = url_of(page, seeded_)
            counts, query_ms, wall_ms, captured = [], [], [], None
            for _ in range(runs + 1):  # the first request warms caches and is not counted
                with CaptureQueriesContext(connection) as queries:
                    started = time.perf_counter()
                    response = client.get(url, secure=True)
                    wall = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{scale} {url}: HTTP {response.status_code}")
                counts.append(len(queries))
                query_ms.append(sum(float(q["time"]) for q in queries.captured_queries) * 1000)
                wall_ms.append(wall)
                captured = queries.captured_queries
            results[(page.key, scale)] = {
                "queries": statistics.median(counts[1:]), "query_counts": sorted(set(counts[1:])),
                "query_ms": statistics.median(query_ms[1:]), "wall_ms": statistics.median(wall_ms[1:]),
                "sql": [(float(q["time"]) * 1000, q["sql"]) for q in captured or []],
            }
            figures = results[(page.key, scale)]
            log(f"  {scale:>5} {page.key:<11} {len(queries):>3} queries, {figures['query_ms']:.1f} ms in queries, "
                f"{figures['wall_ms']:.1f} ms in all")
    return results


def explain(results: dict[tuple[str, str], dict[str, Any]], threshold_ms: float) -> None:
    from django.db import connection

    for (key, scale), figures in results.items():
        for ms, sql in figures["sql"]:
            if ms < threshold_ms:
                continue
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
            shown = sql if len(sql) < 400 else f"{sql[:150]} ... {sql[sql.index(' FROM '):]}"
            log(f"\n--- {key} ({scale}): {ms:.1f} ms\n{shown}\n{plan}")


# --- gunicorn and wrk --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(workdir: Path, port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "gunicorn"), "masscer.wsgi", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
        "--log-level", "warning",
    ]
    env = {**os.environ, **server_env(workdir)}
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)  # noqa: S603
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status, _, _ = fetch(port, "GET", "/accounts/login/")
            if status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit("gunicorn exited at start")
        time.sleep(0.2)
    server.terminate()
    raise SystemExit("gunicorn did not answer within 30 s")


def fetch(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
          body: str | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"X-Forwarded-Proto": "https", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def cookies(headers: http.client.HTTPMessage) -> dict[str, str]:
    found = {}
    for value in headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        found[name.strip()] = rest.split(";", 1)[0]
    return found


def login(port: int, username: str) -> str:
    """Log in through the form (CSRF cookie and token, then the POST); the session cookie."""
    from urllib.parse import urlencode

    status, headers, body = fetch(port, "GET", "/accounts/login/")
    csrf_cookie = cookies(headers)["csrftoken"]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    assert status == 200 and token, "no login form"
    form = urlencode({"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token.group(1).decode()})
    status, headers, _ = fetch(port, "POST", "/accounts/login/", body=form, headers={
        "Cookie": f"csrftoken={csrf_cookie}", "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"https://127.0.0.1:{port}", "Referer": f"https://127.0.0.1:{port}/accounts/login/",
    })
    session = cookies(headers).get("sessionid")
    if status != 302 or not session:
        raise SystemExit(f"login failed: HTTP {status}")
    return f"sessionid={session}; csrftoken={csrf_cookie}"


WRK_LUA = """\
-- Counts responses other than 200 per thread and prints the figures as one JSON line.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) not_ok = 0 end
function response(status, headers, body) if status ~= 200 then not_ok = not_ok + 1 end end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("not_ok") end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "seconds": %.3f, "p50": %.3f, "p95": %.3f, "p99": %.3f, "max": %.3f, ' ..
    '"not_ok": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, bad, e.connect + e.read + e.write + e.timeout))
end
"""


def run_wrk(port: int, path: str, cookie: str, script: Path, *, threads: int, connections: int,
            duration: int) -> dict[str, Any]:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
        "-H", f"Cookie: {cookie}", "-H", "X-Forwarded-Proto: https", f"http://127.0.0.1:{port}{path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line[4:])
    figures["rps"] = figures["requests"] / figures["seconds"] if figures["seconds"] else 0.0
    return figures


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- the report -------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    return f"{cpu}, {os.cpu_count()} cores, {memory:.1f} GiB RAM; Python {platform.python_version()}"


def pg_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return f"PostgreSQL {cursor.fetchone()[0].split()[0]}"


def subsection(connections: int) -> str:
    return f"### PostgreSQL, wrk -c{connections}"


def markdown(args: argparse.Namespace, pages: list[Page], data: dict[str, Seeded], web: dict[str, dict[str, Any]],
             queries: dict[tuple[str, str], dict[str, Any]], server: str, loads: list[str], before: str) -> str:
    big, small = data["large"].count, data["small"].count
    lines = [
        subsection(args.connections),
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}, {platform.system()}; {pg_version()} on the same machine",
        f"- data: {big:,} completions in alice's workspace (support agent: "
        f"{round(big / 2):,} assigned), {small:,} in carol's",
        f"- server: {server}",
        f"- load: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s` per page; load average (1 min) "
        f"before the server started: {before}; at the start of each run (the benchmark's own load included): "
        f"{', '.join(loads)}",
        f"- command: `.venv/bin/python bench/pages_bench.py --count {big} --small {small} "
        f"--connections {args.connections}`",
        "",
        f"| page | URL | req/s | p50 | p95 | p99 | non-200 | queries {small:,} / {big:,} | "
        f"query time {small:,} / {big:,} | in-process request {small:,} / {big:,} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for page in pages:
        q_small, q_big = queries[(page.key, "small")], queries[(page.key, "large")]
        w = web.get(page.key)
        url = url_of(page, data["large"])
        load = (f"{w['rps']:.1f} | {w['p50']:.0f} ms | {w['p95']:.0f} ms | {w['p99']:.0f} ms | "
                f"{w['not_ok'] + w['socket_errors']}") if w else "– | – | – | – | –"
        lines.append(
            f"| {page.label} | `{url}` | {load} | {q_small['queries']:.0f} / {q_big['queries']:.0f} | "
            f"{q_small['query_ms']:.1f} / {q_big['query_ms']:.1f} ms | "
            f"{q_small['wall_ms']:.0f} / {q_big['wall_ms']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--count", type=int, default=100_000, help="completions in alice's workspace")
    parser.add_argument("--small", type=int, default=1_000, help="completions in carol's workspace")
    parser.add_argument("--reseed", action="store_true", help="drop the database and seed it again")
    parser.add_argument("--duration", type=int, default=15, help="seconds of wrk per page")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--server-threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--pages", default="", help="comma-separated page keys (default: all): "
                        + ", ".join(p.key for p in PAGES))
    parser.add_argument("--no-wrk", action="store_true", help="only the in-process query figures")
    parser.add_argument("--no-migrate", action="store_true",
                        help="use the database as it is (e.g. migrated back, to measure without new indexes)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the slow queries")
    parser.add_argument("--explain-ms", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args()
    pages = [p for p in PAGES if not args.pages or p.key in args.pages.split(",")]
    if not args.no_wrk and shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run `bash scripts/ensure_wrk.sh` (Debian's wrk package)")

    workdir = Path(tempfile.mkdtemp(prefix="masscer-pages-bench-"))
    try:
        existed = prepare_database(args.reseed)
        setup_django(workdir)
        from django.core.management import call_command
        from django.db import connections

        if not args.no_migrate:
            call_command("migrate", verbosity=0)
        data = seeded(args.count, args.small) if existed else None
        if data is None:
            if existed:
                log("the database holds other sizes: seeding it again")
                connections.close_all()
                prepare_database(True)
                call_command("migrate", verbosity=0)
            data = fill(args.count, args.small)
        else:
            log(f"reusing {PG_DATABASE} ({args.count:,} + {args.small:,} completions; --reseed to start over)")
        log("queries per request (in process):")
        queries = measure_queries(pages, data)
        if args.explain:
            explain(queries, args.explain_ms)
        connections.close_all()

        web: dict[str, dict[str, Any]] = {}
        loads: list[str] = []
        before = loadavg().split()[0]
        from django.conf import settings

        server = (f"gunicorn {args.workers} workers x {args.server_threads} threads (gthread) on 127.0.0.1, "
                  f"DJANGO_DEBUG=0, CONN_MAX_AGE={settings.DATABASES['default']['CONN_MAX_AGE']}")
        if not args.no_wrk:
            port = free_port()
            gunicorn = start_gunicorn(workdir, port, args.workers, args.server_threads)
            try:
                cookie = login(port, data["large"].user)
                script = workdir / "report.lua"
                script.write_text(WRK_LUA)
                for page in pages:
                    path = url_of(page, data["large"])
                    for _ in range(10):  # warm the workers
                        status, _, _ = fetch(port, "GET", path, headers={"Cookie": cookie})
                        if status != 200:
                            raise SystemExit(f"{path}: HTTP {status} before the run")
                    loads.append(loadavg().split()[0])
                    web[page.key] = run_wrk(port, path, cookie, script, threads=args.threads,
                                            connections=args.connections, duration=args.duration)
                    w = web[page.key]
                    log(f"{page.key:<11} {w['rps']:6.1f} req/s  p50 {w['p50']:6.0f} ms  p95 {w['p95']:6.0f} ms  "
                        f"p99 {w['p99']:6.0f} ms  non-200 {w['not_ok']}  (load {loads[-1]})")
            finally:
                gunicorn.terminate()
                gunicorn.wait(timeout=30)
        block = markdown(args, pages, data, web, queries, server, loads, before)
        print("\n" + block)
        if not args.no_write and not args.no_wrk and len(pages) == len(PAGES):
            write_section(block, subsection(args.connections), section_heading=SECTION, intro=SECTION_INTRO)
            log(f"updated {BENCHMARKS_MD.name} ({SECTION})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
