"""Faults the product survives, on real workers: SIGKILL, warm shutdown, a broker restart.

Each scenario runs a job through `manage.py train --no-wait` on a real Redis broker and real
Celery workers against the fake model (which counts calls per source), injects the fault
while model calls are in flight, restarts what died, and checks the invariants: exactly N
completions, no duplicates, no repeated model calls for chunks that had finished.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testing.fakellm import source_hash
from testing.processes import (
    fake_model_worker_env,
    free_port,
    kill_process,
    manage,
    start_beat,
    start_ready_worker,
    start_redis,
    stop_process,
    wait_for,
)
from training.models import Completion, TrainingJob, WorkItem
from training.services.replies import model_source
from training.validation import normalise

from .conftest import prose

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHUNKS = 8
PER_CHUNK = 4  # one model call per chunk
LATENCY = 1.5


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    fake: Any
    processes: dict[str, Any] = field(default_factory=dict)

    def start(self, name: str, **kwargs: Any) -> None:
        # Ready before the test goes on: a fault injected into a worker still starting up
        # would test Celery's start-up, not the recovery of a job.
        self.processes[name] = start_ready_worker(self.env, name=name, log_path=self.tmp / f"{name}.log", **kwargs)

    def llm(self) -> None:
        self.start("llm", queues="llm", pool="threads", concurrency=2)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.tmp.glob("*.log")))


def source_file(tmp: Path) -> Path:
    # CHUNKS sections of ~700 tokens each, separated by headings: one chunk per section.
    sections = [f"# Section {n}\n\n{prose(1000 + n, 38)}" for n in range(CHUNKS)]
    path = tmp / "handbook.md"
    path.write_text("\n\n".join(sections))
    return path


@pytest.fixture
def stack(fake_llm: Any, tmp_path: Path) -> Iterator[Stack]:
    fake_llm.configure(latency=LATENCY)
    env = fake_model_worker_env(
        fake_llm,
        tmp_path,
        # Short leases and redelivery so recovery fits in a test; the lease must expire
        # before the broker redelivers, or the redelivered task finds the item taken.
        MASSCER_LEASE_SECONDS="3",
        CELERY_VISIBILITY_TIMEOUT="6",
        CELERY_UNACKED_RESTORE_INTERVAL="1",
        CELERY_UNACKED_RESTORE_THROTTLE="1",
        MASSCER_REQUEUE_AFTER_SECONDS="4",
        MASSCER_SWEEP_SECONDS="1",
    )
    result = Stack(env=env, tmp=tmp_path, fake=fake_llm)
    yield result
    for process in result.processes.values():
        kill_process(process)


def start_job(stack: Stack) -> int:
    path = source_file(stack.tmp)
    count = str(CHUNKS * PER_CHUNK)
    result = manage("train", str(path), "-n", count, "--agent", "support", "--no-wait", "--json", env=stack.env)
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout.strip().splitlines()[-1])["job_id"])


def ok_calls(fake: Any) -> list[dict[str, Any]]:
    return [call for call in fake.calls if call["status"] == 200 and call["ended"]]


def in_flight(fake: Any) -> int:
    return sum(1 for call in fake.calls if call["ended"] is None)


def wait_mid_job(stack: Stack) -> None:
    """Until some chunks have finished and model calls are in flight."""
    ready = wait_for(lambda: len(ok_calls(stack.fake)) >= 2 and in_flight(stack.fake) >= 1, timeout=60, interval=0.05)
    assert ready, stack.logs()


def finished_sources(job_id: int) -> dict[str, int]:
    """Source hashes of the work items that are done (a chunk, or a span of chunks: what the
    model was sent), with their call counts so far."""
    done = WorkItem.objects.filter(job_id=job_id, status=WorkItem.Status.DONE).select_related("chunk", "job")
    return {source_hash(model_source(item)): item.calls for item in done}


def job_status(job_id: int) -> str:
    return TrainingJob.objects.values_list("status", flat=True).get(pk=job_id)


def assert_exactly_n_and_no_repeats(stack: Stack, job_id: int, finished_before: dict[str, int]) -> None:
    fault_at = time.monotonic()
    assert wait_for(lambda: job_status(job_id) == "completed", timeout=90, interval=0.25), stack.logs()
    report(
        stack,
        recovered_in_s=round(time.monotonic() - fault_at, 1),
        model_calls=len(stack.fake.calls),
        ideal_calls=CHUNKS,
    )
    job = TrainingJob.objects.get(pk=job_id)
    questions = list(Completion.objects.filter(job=job).values_list("question", flat=True))
    assert job.created_count == len(questions) == CHUNKS * PER_CHUNK, job.shortfall_reasons
    assert len({normalise(q) for q in questions}) == len(questions)
    counts = stack.fake.counts_by_source()
    for digest, calls_then in finished_before.items():
        assert counts.get(digest, 0) == calls_then, "a finished chunk was sent to the model again"


def report(stack: Stack, **figures: Any) -> None:
    """Figures for RELIABILITY.md (printed with -s; appended as JSON to $MASSCER_RELIABILITY_OUT)."""
    figures["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    print("RELIABILITY", json.dumps(figures))
    out = os.environ.get("MASSCER_RELIABILITY_OUT")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(figures) + "\n")


def test_a_worker_killed_mid_job_loses_nothing_and_repeats_no_finished_chunk(stack: Stack) -> None:
    stack.start("ingest", queues="ingest", pool="prefork", concurrency=1)
    stack.llm()
    job_id = start_job(stack)
    wait_mid_job(stack)
    os.killpg(stack.processes["llm"].pid, signal.SIGKILL)
    stack.processes["llm"].wait(timeout=10)
    finished_before = finished_sources(job_id)
    assert finished_before, "some chunks had finished before the kill"
    assert WorkItem.objects.filter(job_id=job_id, status=WorkItem.Status.RUNNING).exists()
    stack.llm()
    assert_exactly_n_and_no_repeats(stack, job_id, finished_before)


def test_negative_control_without_late_acks_the_kill_loses_work(stack: Stack) -> None:
    """The same run with acks_late off (and no sweeper): the killed tasks are gone for good.

    This proves the test above can see a loss; recovery there comes from late acks.
    """
    stack.env["CELERY_TASK_ACKS_LATE"] = "false"
    stack.start("ingest", queues="ingest", pool="prefork", concurrency=1)
    stack.llm()
    job_id = start_job(stack)
    wait_mid_job(stack)
    os.killpg(stack.processes["llm"].pid, signal.SIGKILL)
    stack.processes["llm"].wait(timeout=10)
    stack.llm()
    completed = wait_for(lambda: job_status(job_id) == "completed", timeout=20, interval=0.5)
    assert not completed
    assert WorkItem.objects.filter(job_id=job_id, status=WorkItem.Status.RUNNING).exists()


def test_a_warm_shutdown_mid_job_loses_and_duplicates_nothing(stack: Stack) -> None:
    stack.start("ingest", queues="ingest", pool="prefork", concurrency=1)
    stack.llm()
    job_id = start_job(stack)
    wait_mid_job(stack)
    started = time.monotonic()
    stop_process(stack.processes["llm"], timeout=30)  # SIGTERM: finish what runs, then exit
    assert time.monotonic() - started < 30
    finished_before = finished_sources(job_id)
    stack.llm()
    assert_exactly_n_and_no_repeats(stack, job_id, finished_before)


def test_a_broker_restart_mid_job_is_recovered_by_the_sweeper(stack: Stack) -> None:
    port = free_port()  # not a fixed one: two test runs side by side must not share it
    redis = start_redis(port, workdir=stack.tmp)
    stack.env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    stack.env.pop("CELERY_BROKER_KEYPREFIX", None)
    try:
        stack.start("ingest", queues="ingest", pool="prefork", concurrency=1)
        stack.llm()
        stack.processes["beat"] = start_beat(stack.env, schedule=stack.tmp / "beat", log_path=stack.tmp / "beat.log")
        job_id = start_job(stack)
        wait_mid_job(stack)
        kill_process(redis)  # every queued and unacknowledged message is gone with it
        time.sleep(1)
        redis = start_redis(port, workdir=stack.tmp)
        finished_before = finished_sources(job_id)
        assert_exactly_n_and_no_repeats(stack, job_id, finished_before)
    finally:
        kill_process(redis)
