"""Recovery in seconds: short leases kept alive by a heartbeat while work runs, a reply that
arrived is stored once the database is back, and transient database or broker errors are retried.

The fault tests (test_faults.py) kill workers and brokers for real; these pin down the
mechanisms one by one. Figures with the default settings: bench/recovery_bench.py (B8 in
RELIABILITY.md).
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.exceptions import Retry
from django.db import OperationalError, connection
from django.utils import timezone

from documents import services as document_services
from documents.models import Document
from documents.tasks import ingest_document_task
from masscer import leases
from masscer.lib.heartbeat import Heartbeat
from training import generation, hotsql, services, tasks
from training.models import TrainingJob, WorkItem
from training.services import completions, job_prepare, replies

from .test_generation import new_job


@pytest.fixture
def quick_heartbeat(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Heartbeat:
    """Leases of 1.5 s, renewed every 0.5 s (the shipped ones: 30 s, every 10 s)."""
    settings.MASSCER_LEASE_SECONDS = 1.5
    beat = Heartbeat(interval=0.5, on_tick_end=lambda healthy: connection.close())
    monkeypatch.setattr(leases, "_heartbeat", beat)
    return beat


def a_rival_claims(item_id: int) -> int | None:
    """What another worker's claim (after the sweeper re-queued the item) would get."""
    now = timezone.now()
    return hotsql.claim(item_id, now=now, lease_until=now + timedelta(seconds=30))


@pytest.mark.django_db(transaction=True)
def test_a_model_call_longer_than_the_lease_keeps_its_item(
    alice: Any, agent: Any, ready_document: Any, fake_llm: Any, quick_heartbeat: Heartbeat
) -> None:
    fake_llm.configure(latency=4.0)  # the call outlasts the 1.5 s lease more than twice
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(generation.work_item_run(item_id=item.pk)))
    worker.start()
    try:
        assert _wait(lambda: fake_llm.calls and fake_llm.calls[0]["ended"] is None)
        time.sleep(2.5)  # past the first lease
        assert a_rival_claims(item.pk) is None  # the heartbeat renewed it: nobody takes it over
        assert WorkItem.objects.get(pk=item.pk).lease_expires_at > timezone.now()
    finally:
        worker.join(30)
        connection.close()
    job.refresh_from_db()
    assert outcome == ["done"] and job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 3 and len(fake_llm.calls) == 1
    assert WorkItem.objects.get(pk=item.pk).attempts == 1
    assert quick_heartbeat.held() == []  # released with the run


@pytest.mark.django_db(transaction=True)
def test_a_dead_workers_item_is_free_once_its_short_lease_lapses(
    alice: Any, agent: Any, ready_document: Any, fake_llm: Any, quick_heartbeat: Heartbeat
) -> None:
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)
    # A worker claimed it and died: no heartbeat renews its lease.
    assert a_rival_claims(item.pk) is not None
    WorkItem.objects.filter(pk=item.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=1.5))
    assert generation.work_item_run(item_id=item.pk) == "not-claimed"
    time.sleep(1.6)
    assert services.sweep()["work_items"] == 1  # re-sent by the sweeper ...
    assert generation.work_item_run(item_id=item.pk) == "done"  # ... and taken over
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3


@pytest.mark.django_db
def test_a_reply_that_arrived_is_stored_once_the_database_is_back(
    alice: Any, agent: Any, ready_document: Any, fake_llm: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MASSCER_DB_OUTAGE_SECONDS = 30
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)
    real_store = completions.store_completions
    failures = iter([OperationalError("server closed the connection unexpectedly")] * 2)

    def store_while_the_database_comes_back(**kwargs: Any) -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_store(**kwargs)

    monkeypatch.setattr(completions, "store_completions", store_while_the_database_comes_back)
    monkeypatch.setattr(connection, "close", lambda: None)  # the test's connection holds its transaction
    monkeypatch.setattr(replies.time, "sleep", lambda seconds: None)

    assert generation.work_item_run(item_id=item.pk) == "done"

    job.refresh_from_db()
    assert job.created_count == 3 and job.calls == 1 and len(fake_llm.calls) == 1  # the paid call was not thrown away


@pytest.mark.django_db
def test_a_database_outage_longer_than_allowed_gives_the_item_back(
    alice: Any, agent: Any, ready_document: Any, fake_llm: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MASSCER_DB_OUTAGE_SECONDS = 0
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)

    def database_away(**kwargs: Any) -> int:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(completions, "store_completions", database_away)
    monkeypatch.setattr(replies, "_record_call", lambda *args: None)
    with pytest.raises(OperationalError):
        generation.work_item_run(item_id=item.pk)
    # The task retries once the lease has lapsed (the sweeper would find the item too).
    monkeypatch.setattr(generation, "work_item_run", lambda **kwargs: database_away())
    with pytest.raises(Retry) as retry:
        tasks.generate_task.apply(args=(item.pk,), throw=True)
    assert settings.MASSCER_LEASE_SECONDS <= retry.value.when <= settings.MASSCER_LEASE_SECONDS * 1.5


@pytest.mark.parametrize("error", [OperationalError("the database is away"), redis.exceptions.ConnectionError("Redis")])
def test_transient_database_and_broker_errors_are_retried(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def fail(**kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(generation, "work_item_run", fail)
    with pytest.raises(Retry):
        tasks.generate_task.apply(args=(1,), throw=True)


@pytest.mark.django_db(transaction=True)
def test_a_long_extraction_keeps_its_document(
    alice: Any, tmp_path: Any, settings: Any, quick_heartbeat: Heartbeat, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    document = document_services.document_create(
        owner=alice, fileobj=__import__("io").BytesIO(b"A short note about refunds."), filename="note.txt",
        enqueue=False,
    )  # fmt: skip
    real_extract = document_services._extract

    def slow_extract(doc: Document, *args: Any) -> Any:
        time.sleep(3.0)  # twice the 1.5 s lease
        return real_extract(doc, *args)

    monkeypatch.setattr(document_services, "_extract", slow_extract)
    worker = threading.Thread(target=lambda: (document_services.document_extract(document_id=document.pk),
                                              connection.close()))  # fmt: skip
    worker.start()
    try:
        time.sleep(2.2)
        # Another ingest worker (or the sweeper's re-send) finds it still taken.
        assert document_services._claim_for_extraction(document.pk) is None
    finally:
        worker.join(30)
    document.refresh_from_db()
    assert document.status == Document.Status.READY


def test_an_extraction_hit_by_a_database_outage_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def database_away(**kwargs: Any) -> Document:
        raise OperationalError("the database is away")

    monkeypatch.setattr(document_services, "document_extract", database_away)
    with pytest.raises(Retry):
        ingest_document_task.apply(args=(1,), throw=True)


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
