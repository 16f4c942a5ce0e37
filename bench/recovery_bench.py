"""B8 recovery with the default settings: a dead worker, a broker restart, a database outage.

Real components, default leases and sweep (MASSCER_LEASE_SECONDS, MASSCER_SWEEP_SECONDS,
MASSCER_REQUEUE_AFTER_SECONDS as shipped): PostgreSQL behind a TCP relay this script can cut,
a Redis of its own as the broker (so it can be restarted), a prefork ingest worker, a threads
llm worker, beat, and the fake model (1 s per call). A job of N completions over 8 chunks is
started, and once calls are in flight the fault is made:

- dead worker: SIGKILL of the llm worker (its whole process group), restarted at once;
- broker restart: the Redis killed (every queued and unacknowledged message lost), started again 1 s later;
- database outage: every PostgreSQL connection cut and new ones refused for 20 s.

Recovery is timed from the fault to the job's end; "extra calls" are model calls beyond the
run without a fault.

    .venv/bin/python bench/recovery_bench.py [--faults kill,broker,database] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import (  # noqa: E402
    BenchError,
    Stack,
    bench_env,
    interrupt_on_signals,
    job_stats,
    machine,
    migrate,
    postgres_database,
    print_table,
    start_fake,
    tail,
    wait_for_ready,
)

from testing.processes import (  # noqa: E402
    child_env,
    free_port,
    kill_process,
    manage,
    start_beat,
    start_redis,
    start_worker,
    wait_for,
)

CHUNKS, PER_CHUNK = 8, 4
LATENCY = 1.0
OUTAGE_SECONDS = 20.0


class Relay:
    """A TCP relay to PostgreSQL that can be cut: while cut, it drops every connection and
    refuses new ones, as a database that went away does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.cut = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if self.cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        chooser = selectors.DefaultSelector()
        chooser.register(client, selectors.EVENT_READ, upstream)
        chooser.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self.cut.is_set():
                for key, _ in chooser.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for end in (client, upstream):
                end.close()

    def outage(self, seconds: float) -> None:
        self.cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        time.sleep(seconds)
        self.cut.clear()


def source_file(workdir: Path) -> Path:
    from training.tests.conftest import prose

    sections = [f"# Section {n}\n\n{prose(1000 + n, 38)}" for n in range(CHUNKS)]
    path = workdir / "handbook.md"
    path.write_text("\n\n".join(sections))
    return path


def start_job(source: Path, env: dict[str, str]) -> int:
    started = manage("train", str(source), "-n", str(CHUNKS * PER_CHUNK), "--agent", "bench", "--no-wait", "--json",
                     env=env)  # fmt: skip
    if started.returncode != 0:
        raise BenchError("train failed:\n" + started.stderr[-3000:])
    return int(json.loads(started.stdout.strip().splitlines()[-1])["job_id"])


def calls_log(fake_url: str) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(fake_url.removesuffix("/v1") + "/_fake/calls?brief=1", timeout=10) as response:
        return json.loads(response.read())


def run(fault: str, workdir: Path, database: str) -> dict[str, Any]:
    stack = Stack()
    relay = Relay(("127.0.0.1", 5432))
    try:
        fake_url = start_fake(stack, workdir / "fake.log", ["--latency", str(LATENCY)])
        redis_port = free_port()
        redis = stack.add("redis", start_redis(redis_port, workdir=workdir))
        url = database.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
        env = child_env(**bench_env(url, fake_url, workdir), CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0")
        migrate(env)

        def llm() -> None:
            log = workdir / "llm.log"
            process = stack.add("llm", start_worker(env, queues="llm", pool="threads", concurrency=4, name="llm",
                                                    log_path=log))  # fmt: skip
            wait_for_ready(log, process, "llm")

        ingest_log = workdir / "ingest.log"
        ingest = stack.add("ingest", start_worker(env, queues="ingest", pool="prefork", concurrency=1, name="ingest",
                                                  log_path=ingest_log))  # fmt: skip
        wait_for_ready(ingest_log, ingest, "ingest")
        llm()
        stack.add("beat", start_beat(env, schedule=workdir / "beat", log_path=workdir / "beat.log"))
        job_id = start_job(source_file(workdir), env)
        if fault != "none":
            in_flight = wait_for(
                lambda: sum(1 for c in calls_log(fake_url) if c["ended"] is None) >= 1
                and sum(1 for c in calls_log(fake_url) if c["ended"]) >= 2,
                timeout=120, interval=0.05,
            )  # fmt: skip
            if not in_flight:
                raise BenchError("no model call in flight: " + tail(workdir / "llm.log"))
        fault_at = time.monotonic()
        if fault == "kill":
            process = dict(stack.processes)["llm"]
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            stack.processes = [(n, p) for n, p in stack.processes if p is not process]
            llm()
        elif fault == "broker":
            kill_process(redis)
            time.sleep(1)
            stack.add("redis", start_redis(redis_port, workdir=workdir))
        elif fault == "database":
            relay.outage(OUTAGE_SECONDS)

        def finished() -> bool:
            # Read directly, not through the relay (which may be cut).
            with psycopg.connect(database, autocommit=True) as connection:
                row = connection.execute("SELECT status FROM training_trainingjob WHERE id = %s", [job_id]).fetchone()
            return row is not None and row[0] in ("completed", "failed", "cancelled")

        done = wait_for(finished, timeout=900, interval=1.0)
        recovered = time.monotonic() - fault_at
        stats = job_stats(job_id, ("status", "calls", "made"), env)
        return {
            "fault": fault,
            "finished": done,
            "status": stats["status"],
            "seconds": round(recovered, 1),
            "delivered": f"{stats['completions']} of {CHUNKS * PER_CHUNK}",
            "calls": len([c for c in calls_log(fake_url) if c.get("status") == 200]),
        }
    finally:
        stack.stop()


FAULTS = {"none": "no fault", "kill": "dead llm worker (SIGKILL)", "broker": "broker restart",
          "database": f"database outage ({OUTAGE_SECONDS:.0f} s)"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default="none,kill,broker,database")
    parser.add_argument("--write", action="store_true", help="record the figures in RELIABILITY.md")
    args = parser.parse_args()
    interrupt_on_signals()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")
    import django

    django.setup()
    results = []
    for fault in args.faults.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(fault, Path(tmp), postgres_database("masscer_recovery")))
            print(json.dumps(results[-1]), flush=True)
    ideal = next((r["calls"] for r in results if r["fault"] == "none"), CHUNKS)
    rows = [
        (FAULTS[r["fault"]], f"{r['status']} in {r['seconds']} s after the fault; {r['delivered']}; "
                             f"{r['calls']} model calls ({r['calls'] - ideal:+d})")
        for r in results
    ]  # fmt: skip
    print_table("B8 recovery, default leases and sweep", rows)
    if args.write:
        write_reliability(rows)


def write_reliability(rows: list[tuple[str, str]]) -> None:
    import datetime as dt

    path = ROOT / "RELIABILITY.md"
    heading = "### Recovery with the default settings (B8)"
    block = [
        heading,
        "",
        f"`bench/recovery_bench.py`, {dt.date.today()}, {machine()}: a job of {CHUNKS * PER_CHUNK} over {CHUNKS}"
        f" chunks, fake model {LATENCY:g} s per call, llm worker of 4 threads, PostgreSQL, Redis broker;"
        " leases, sweep and re-queue as shipped. Seconds from the fault to the job's end; calls"
        " against the run without a fault.",
        "",
        "| fault | result |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    text = path.read_text()
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start)
        end = len(text) if end < 0 else end + 1
        text = text[:start] + "\n".join(block) + "\n" + text[end:]
    else:
        anchor = text.index("\n## Uploads, secrets and logins")
        text = text[:anchor] + "\n" + "\n".join(block) + text[anchor:]
    path.write_text(text)


if __name__ == "__main__":
    main()
