"""/metrics: a job's model calls counted by outcome (across processes), the record's state, and who may read it."""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from documents.models import Document, Page
from masscer import metrics
from masscer.celery import app
from masscer.lib import llm
from testing.processes import (
    broker_env,
    celery_worker,
    child_env,
    database_url,
    free_port,
    manage,
    start_redis,
    stop_process,
)
from training.batch import batch_tick
from training.generation import RetryLater, work_item_run
from training.models import BatchRound, TrainingJob, WorkItem
from training.services import job_create, job_prepare
from workspaces.services import workspace_personal

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
WORDS = ["river", "bridge", "engine", "harbour", "valve", "turbine", "ledger", "invoice", "refund", "warranty"]
pytestmark = pytest.mark.django_db

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed and CI is set")
        pytest.skip("redis-server is not installed")


def scrape(client: Any, **headers: Any) -> Samples:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    found: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_outcome(samples: Samples, name: str = "masscer_model_calls_total", mode: str = "live") -> dict[str, float]:
    counts: dict[str, float] = defaultdict(float)
    for (sample, labels), count in samples.items():
        shown = dict(labels)
        if sample == name and shown.get("mode", mode) == mode:
            counts[shown["outcome"]] += count
    return counts


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


_made = itertools.count(1)


def ready_document(owner: Any, pages: int = 1) -> Document:
    """A document already extracted into pages, with varied prose (distinct questions)."""
    rng = random.Random(next(_made))
    document = Document.objects.create(
        owner=owner, workspace=workspace_personal(user=owner), title="Manual", filename="manual.txt",
        file="documents/x.txt", sha256="0" * 64, status=Document.Status.READY, page_count=pages,
    )  # fmt: skip
    for number in range(1, pages + 1):
        sentences = (" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(25))
        Page.objects.create(document=document, number=number, text=" ".join(sentences))
    return document


def run_live_job(job: TrainingJob, rounds: int = 10) -> None:
    """What the llm workers do, inline."""
    job_prepare(job_id=job.pk)
    for _ in range(rounds):
        pending = WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True)
        for item_id in list(pending):
            try:
                work_item_run(item_id=item_id)
            except RetryLater:
                pass
    job.refresh_from_db()


# --- counting --------------------------------------------------------------------------------------


def test_metrics_count_a_jobs_calls_by_outcome_with_tokens_and_latency(client, alice, agent, fake_llm) -> None:
    fake_llm.script(
        [{"kind": "http_error", "status": 429, "retry_after": 1}, {"kind": "http_error", "status": 500},
         {"kind": "length", "n": 1}, {"kind": "invalid_json"}]
    )  # fmt: skip
    before = scrape(client)
    job = job_create(owner=alice, count=6, agents=[agent], documents=[ready_document(alice)])
    run_live_job(job)
    after = scrape(client)

    assert job.status == TrainingJob.Status.COMPLETED and job.created_count > 0
    calls = delta(by_outcome(before), by_outcome(after))
    # Every request the model saw, by what came of it; replies are the job's counted calls.
    assert calls == {
        "rate_limited": 1, "transient_error": 1, "truncated": 1, "invalid_output": 1, "ok": job.calls - 2
    }, calls  # fmt: skip
    assert sum(calls.values()) == len(fake_llm.calls)
    timed = delta(
        by_outcome(before, "masscer_model_call_seconds_count"), by_outcome(after, "masscer_model_call_seconds_count")
    )
    assert timed == calls
    assert value(after, "masscer_model_tokens_total", kind="prompt", mode="live") - value(
        before, "masscer_model_tokens_total", kind="prompt", mode="live"
    ) == job.prompt_tokens > 0
    assert value(after, "masscer_model_tokens_total", kind="completion", mode="live") - value(
        before, "masscer_model_tokens_total", kind="completion", mode="live"
    ) == job.completion_tokens > 0
    # The record as it stands.
    assert value(after, "masscer_jobs", status="completed") == 1
    assert value(after, "masscer_jobs", status="generating") == 0
    assert value(after, "masscer_completions", status="pending") == job.created_count
    assert value(after, "masscer_completions", status="approved") == 0


def test_a_batch_jobs_results_are_counted_as_batch_calls(client, alice, agent, fake_llm) -> None:
    first = scrape(client)
    before = by_outcome(first, mode="batch")
    job = job_create(owner=alice, count=6, agents=[agent], documents=[ready_document(alice, pages=2)], mode="batch")
    job_prepare(job_id=job.pk)
    for _ in range(10):
        job.refresh_from_db()
        if job.is_finished:
            break
        BatchRound.objects.filter(job=job).update(next_check_at=timezone.now())
        batch_tick(job_id=job.pk)
    after = scrape(client)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED
    assert delta(before, by_outcome(after, mode="batch")) == {"ok": job.calls}
    # Batch results have no latency of their own: nothing is timed.
    latency = "masscer_model_call_seconds_count"
    assert by_outcome(after, latency) == by_outcome(first, latency)


def test_failed_extractions_are_counted(client, alice) -> None:
    document = ready_document(alice)
    assert value(scrape(client), "masscer_extraction_failures") == 0
    Document.objects.filter(pk=document.pk).update(status=Document.Status.FAILED, error="Encrypted PDF")
    assert value(scrape(client), "masscer_extraction_failures") == 1


def test_queue_depth_counts_the_tasks_waiting_in_redis(client, settings, tmp_path) -> None:
    require_redis_server()
    port = free_port()
    broker = start_redis(port, workdir=tmp_path)
    try:
        settings.CELERY_BROKER_URL = url = f"redis://127.0.0.1:{port}/0"
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
        with app.connection_for_write(url) as conn:
            for item_id in (1, 2):
                app.send_task("training.tasks.generate_task", args=[item_id], connection=conn)
            app.send_task("training.tasks.job_prepare_task", args=[1], connection=conn)
        samples = scrape(client)
        assert value(samples, "masscer_queue_depth", queue="llm") == 2
        assert value(samples, "masscer_queue_depth", queue="ingest") == 1
        stop_process(broker)
        # The broker away: the scrape still answers, without the queue depths.
        assert not any(name == "masscer_queue_depth" for name, _ in scrape(client))
    finally:
        stop_process(broker)


def test_queue_depth_counts_the_filesystem_brokers_messages(client, settings, tmp_path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(tmp_path)}
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    with app.connection_for_write("filesystem://", transport_options=options) as conn:
        app.send_task("training.tasks.generate_task", args=[1], connection=conn)
    samples = scrape(client)
    assert value(samples, "masscer_queue_depth", queue="llm") == 1
    assert value(samples, "masscer_queue_depth", queue="ingest") == 0


# --- who may read them -------------------------------------------------------------------------


def test_without_a_token_only_loopback_clients_may_read_the_metrics(client, settings) -> None:
    settings.MASSCER_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:203.0.113.9").status_code == 403
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert refused.status_code == 403
    assert "MASSCER_METRICS_TOKEN" in refused.json()["detail"]
    # A proxy on the same machine relays outsiders from loopback: not a loopback client.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    assert b"masscer_" not in refused.content


def test_with_a_token_the_metrics_want_it_from_everyone(client, settings) -> None:
    settings.MASSCER_METRICS_TOKEN = "s3cret-scrape-token"
    assert client.get("/metrics").status_code == 401  # loopback is not enough any more
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer guess", REMOTE_ADDR="10.0.0.9")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    samples = scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token", REMOTE_ADDR="10.0.0.9")
    assert value(samples, "masscer_jobs", status="queued") == 0
    assert ("masscer_jobs", frozenset({("status", "queued")})) in samples


def test_the_metrics_are_exempt_from_the_https_redirect(client, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    assert client.get("/metrics").status_code == 200
    assert client.get("/documents/").status_code == 301


# --- across processes: a real worker counts, the web process shows ------------------------------


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A counters folder shared by this process (which reads) and the worker (which counts)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    yield folder


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_metrics_show_the_calls_a_real_worker_made(client, alice, agent, fake_llm, metrics_dir, tmp_path) -> None:
    env = child_env(
        DATABASE_URL=database_url(connection.settings_dict),
        **broker_env(),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        MASSCER_LLM_BASE_URL=fake_llm.base_url,
        MASSCER_LLM_API_KEY="sk-test-secret-key",
        MASSCER_LLM_MODEL="fake-model",
        MASSCER_MEDIA_ROOT=str(tmp_path / "uploads"),
        MASSCER_CLI_USER="alice",
    )
    pdf = SAMPLES / "pdf" / "pdflatex-4-pages.pdf"
    log = tmp_path / "worker.log"
    with celery_worker(env, queues="ingest,llm", pool="threads", concurrency=4, name="metrics", log_path=log):
        result = manage("train", str(pdf), "--count", "6", "--agent", "support", "--json", env=env, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout + log.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"

    samples = scrape(client)  # this process made no call: it adds up the worker's files
    assert by_outcome(samples) == {"ok": summary["model_calls"]} and summary["model_calls"] == len(fake_llm.calls)
    assert value(samples, "masscer_model_tokens_total", kind="prompt", mode="live") == summary["prompt_tokens"]
    assert value(samples, "masscer_model_tokens_total", kind="completion", mode="live") == summary[
        "completion_tokens"
    ]
    assert value(samples, "masscer_jobs", status="completed") == 1
    assert value(samples, "masscer_completions", status="pending") == 6
    # One file per process and kind, named by host and pid (containers share the folder).
    assert {path.name.split("_")[0] for path in metrics_dir.iterdir()} == {"counter", "histogram"}


def test_a_failure_to_count_never_costs_the_reply(monkeypatch, caplog) -> None:
    def broken(**labels: str) -> Any:
        raise OSError("No space left on device")

    monkeypatch.setattr(metrics.MODEL_CALLS, "labels", broken)
    reply = llm.Reply(pairs=[], finish_reason="stop", usage=llm.Usage(10, 5), parse_error=None, raw_text="", model="m")
    with metrics.model_call() as call:
        got = call.reply = reply
    assert got is reply
    assert "could not count a model call" in caplog.text
