"""Generating while extracting (#17.3): pages are stored as the extraction child reads them, the
chunks they settle are exactly those of a whole-text split, and a live job plans and runs items
for them before the document is ready, with exactly N pairs of each type in the end."""
from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from documents import services as document_services
from documents.models import Document, Page
from masscer.lib.extract import extract_file
from masscer.lib.tokens import chunk_pages
from testing.processes import celery_worker, fake_model_worker_env, manage
from training.models import Chunk, Completion, TrainingJob, WorkItem
from training.question_types import type_counts
from training.services import JobNotReady, job_create, job_prepare
from training.services import jobs as job_services
from training.services.chunks import stable_chunk_specs
from training.services.prepare import batch_counts

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
GEOTOPO = SAMPLES / "pdf" / "GeoTopo-komprimiert.pdf"
TYPES = {"factual": 2, "procedural": 1}


@functools.cache
def _pages(name: str) -> list[str]:
    path = SAMPLES / "pdf" / name
    return extract_file(str(path), filename=name, max_bytes=50 * 1024**2, max_pages=2000).pages


# --- chunks settled during extraction are the whole text's chunks ----------------------------------


@pytest.mark.parametrize("name", ["GeoTopo-komprimiert.pdf", "multicolumn.pdf", "pdflatex-outline.pdf"])
@pytest.mark.parametrize(("budget", "overlap"), [(800, 80), (120, 30)])
def test_chunks_settled_page_by_page_are_the_whole_texts_chunks(name: str, budget: int, overlap: int) -> None:
    pages = _pages(name)
    whole = chunk_pages(pages, budget=budget, overlap=overlap)
    known = 0
    for read in range(1, len(pages) + 1):
        settled = stable_chunk_specs(pages[:read], budget=budget, overlap=overlap, known=known)
        assert settled == whole[: len(settled)], f"page {read}: a settled chunk differs from the whole split"
        assert len(settled) >= known
        known = len(settled)
    if name == "GeoTopo-komprimiert.pdf":
        # Most chunks are settled long before the last page: that is what lets work start early.
        halfway = stable_chunk_specs(pages[: len(pages) // 2], budget=budget, overlap=overlap)
        assert len(halfway) >= len(whole) // 3


def test_the_last_pass_plans_exactly_what_remains_of_each_type() -> None:
    totals = type_counts(TYPES, 300)  # {"factual": 200, "procedural": 100}
    early = batch_counts(totals, {}, 0.25, last=False)
    assert early == {"factual": 50, "procedural": 25}
    later = batch_counts(totals, {"factual": 50, "procedural": 25}, 0.5, last=False)
    assert later == {"factual": 50, "procedural": 25}
    assert batch_counts(totals, {"factual": 100, "procedural": 50}, 1.0, last=True) == {
        "factual": 100,
        "procedural": 50,
    }
    # A batch without neighbouring chunks planned its multi-hop count as factual: the last pass
    # still plans exactly what remains of N (20 - 12), not the 10 multi-hop pairs still missing.
    totals = {"factual": 10, "multi_hop": 10}
    assert batch_counts(totals, {"factual": 12}, 1.0, last=True) == {"multi_hop": 8}
    assert batch_counts(totals, {"factual": 8}, 1.0, last=True) == {"factual": 2, "multi_hop": 10}


# --- a job planned while its document is read (in process: no worker) ------------------------------


@pytest.fixture
def geotopo(alice: Any, tmp_path: Path, settings: Any) -> Document:
    settings.MEDIA_ROOT = str(tmp_path)
    with GEOTOPO.open("rb") as handle:
        return document_services.document_create(
            owner=alice, fileobj=handle, filename=GEOTOPO.name, enqueue=False
        )


def _quotas(job: TrainingJob) -> dict[str, int]:
    quotas: Counter[str] = Counter()
    for question_type, quota in WorkItem.objects.filter(job=job).values_list("question_type", "quota"):
        quotas[question_type] += quota
    return dict(quotas)


def _assert_whole_text_chunks(document: Document) -> None:
    pages = list(document.pages.order_by("number").values_list("text", flat=True))
    whole = chunk_pages(pages, budget=800, overlap=80)
    stored = list(Chunk.objects.filter(document=document).order_by("index"))
    assert [(c.index, c.text, c.start, c.end, c.locator["pages"]) for c in stored] == [
        (s.index, s.text, s.start, s.end, [s.first_page, s.last_page]) for s in whole
    ]


@pytest.mark.django_db
def test_a_live_job_plans_items_from_the_first_pages_and_ends_with_exactly_n_per_type(
    alice: Any, agent: Any, geotopo: Document, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP = 800, 80
    job = job_create(owner=alice, count=60, agents=[agent], documents=[geotopo], question_types=TYPES)
    seen: list[tuple[str, int, int, str, int]] = []
    real_pass = job_services._plan_while_reading

    def recorded_pass(job_: TrainingJob) -> bool:
        done = real_pass(job_)
        document = Document.objects.get(pk=geotopo.pk)
        items = WorkItem.objects.filter(job=job_).count()
        seen.append((document.status, document.pages_extracted, document.page_count, document.progress_label, items))
        return done

    monkeypatch.setattr(job_services, "_plan_while_reading", recorded_pass)
    job_prepare(job_id=job.pk)

    early = [s for s in seen if s[0] == Document.Status.EXTRACTING and s[4] > 0]
    assert early, f"no item was planned while the document was read: {seen}"
    status, read, total, label, _ = early[0]
    assert total == 117 and read < 117 and label == f"p. {read} of 117"
    job.refresh_from_db()
    geotopo.refresh_from_db()
    assert geotopo.status == Document.Status.READY and geotopo.pages_extracted == 117
    assert job.status == TrainingJob.Status.GENERATING
    assert _quotas(job) == type_counts(TYPES, 60) == {"factual": 40, "procedural": 20}
    assert job.chunks_total == WorkItem.objects.filter(job=job).count()
    _assert_whole_text_chunks(geotopo)
    # A redelivered prepare finds the job planned: nothing is added.
    items = list(WorkItem.objects.filter(job=job).values_list("pk", "quota"))
    job_prepare(job_id=job.pk)
    assert list(WorkItem.objects.filter(job=job).values_list("pk", "quota")) == items


def _read_by_another_worker(document: Document, pages: list[str], upto: int) -> None:
    """The document as another ingest worker leaves it: extracting, its first pages stored."""
    Document.objects.filter(pk=document.pk).update(
        status=Document.Status.EXTRACTING,
        lease_expires_at=timezone.now() + timedelta(minutes=5),
        page_count=len(pages),
        pages_extracted=upto,
    )
    Page.objects.bulk_create(
        [Page(document=document, number=n, text=pages[n - 1]) for n in range(1, upto + 1)], ignore_conflicts=True
    )


@pytest.mark.django_db
def test_a_prepare_run_again_while_another_worker_reads_plans_each_chunk_once(
    alice: Any, agent: Any, geotopo: Document, settings: Any, monkeypatch: Any
) -> None:
    settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP = 800, 80
    # Each run hands the wait to a retry at once (the in-process following has its own test).
    monkeypatch.setattr(job_services, "FOLLOW_READING_SECONDS", 0.0)
    pages = _pages(GEOTOPO.name)
    job = job_create(owner=alice, count=90, agents=[agent], documents=[geotopo], question_types=TYPES)
    _read_by_another_worker(geotopo, pages, 40)
    with pytest.raises(JobNotReady):
        job_prepare(job_id=job.pk)
    first = list(WorkItem.objects.filter(job=job).order_by("pk").values_list("pk", "chunk_id", "quota"))
    assert first and sum(q for _, _, q in first) < 90
    with pytest.raises(JobNotReady):  # redelivered, or the sweeper's re-send: same pages, same plan
        job_prepare(job_id=job.pk)
    assert list(WorkItem.objects.filter(job=job).order_by("pk").values_list("pk", "chunk_id", "quota")) == first
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.CHUNKING and job.chunks_total == len(first)

    _read_by_another_worker(geotopo, pages, 90)
    with pytest.raises(JobNotReady):
        job_prepare(job_id=job.pk)
    second = list(WorkItem.objects.filter(job=job).order_by("pk").values_list("pk", "chunk_id", "quota"))
    assert second[: len(first)] == first and len(second) > len(first)
    _no_chunk_planned_twice(job)

    # The other worker finishes (or the sweeper resumes an interrupted planning): the last pass
    # plans exactly what remains.
    Page.objects.bulk_create(
        [Page(document=geotopo, number=n, text=pages[n - 1]) for n in range(1, 118)], ignore_conflicts=True
    )
    Document.objects.filter(pk=geotopo.pk).update(
        status=Document.Status.READY, pages_extracted=117, lease_expires_at=None
    )
    job_prepare(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.GENERATING
    assert _quotas(job) == {"factual": 60, "procedural": 30}
    _no_chunk_planned_twice(job)
    _assert_whole_text_chunks(Document.objects.get(pk=geotopo.pk))


@pytest.mark.django_db(transaction=True)
def test_a_prepare_follows_another_workers_reading_and_plans_the_last_pages_in_the_same_run(
    alice: Any, agent: Any, geotopo: Document, settings: Any
) -> None:
    """The upload's own ingest task usually claims the file before the job's prepare runs: the
    prepare follows that reading in-process, plans the pages as they are stored and the rest
    once the document is ready, without waiting for a retry through the broker."""
    settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP = 800, 80
    pages = _pages(GEOTOPO.name)
    job = job_create(owner=alice, count=90, agents=[agent], documents=[geotopo], question_types=TYPES)
    _read_by_another_worker(geotopo, pages, 20)
    planned_while_reading: list[int] = []

    def other_worker() -> None:
        try:
            for upto in (50, 80, 117):
                time.sleep(0.7)  # longer than READING_POLL_SECONDS: each batch gets its own pass
                planned_while_reading.append(sum(WorkItem.objects.filter(job=job).values_list("quota", flat=True)))
                _read_by_another_worker(geotopo, pages, upto)
            time.sleep(0.7)
            Document.objects.filter(pk=geotopo.pk).update(
                status=Document.Status.READY, pages_extracted=117, lease_expires_at=None
            )
        finally:
            connection.close()

    reader = threading.Thread(target=other_worker)
    reader.start()
    try:
        job_prepare(job_id=job.pk)  # no JobNotReady: the same run plans to the end
    finally:
        reader.join()
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.GENERATING
    assert _quotas(job) == {"factual": 60, "procedural": 30}
    # Items were planned as the pages came, not all at the end.
    assert 0 < planned_while_reading[0] < planned_while_reading[-1] < 90
    _no_chunk_planned_twice(job)


def _no_chunk_planned_twice(job: TrainingJob) -> None:
    """Every chunk is read by at most one item of each type (spans included)."""
    covered: Counter[tuple[int, str]] = Counter()
    for index, span, question_type in WorkItem.objects.filter(job=job).values_list(
        "chunk__index", "span", "question_type"
    ):
        covered.update((i, question_type) for i in range(index, index + span))
    assert max(covered.values()) == 1


@pytest.mark.django_db
def test_a_document_that_fails_midway_fails_the_job_with_the_reason(
    alice: Any, agent: Any, geotopo: Document, settings: Any, monkeypatch: Any
) -> None:
    settings.MASSCER_MAX_DOCUMENT_TOKENS = 15_000  # GeoTopo passes it around page 30
    # Every batch of pages stored and planned at once: items exist before the failure however
    # fast (or slow, on a busy machine) the first 30 pages are read.
    monkeypatch.setattr(document_services._PageWriter, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(job_services, "READING_POLL_SECONDS", 0.0)
    job = job_create(owner=alice, count=30, agents=[agent], documents=[geotopo])
    job_prepare(job_id=job.pk)
    job.refresh_from_db()
    geotopo.refresh_from_db()
    assert geotopo.status == Document.Status.FAILED and "15,000 tokens" in geotopo.error
    assert 0 < geotopo.pages_extracted < 117 and not geotopo.pages.exists()
    assert job.status == TrainingJob.Status.FAILED
    assert job.error.startswith(f"The document '{geotopo.title}' could not be read: The document has more than")
    assert "Completions made from what was read before are kept." in job.error
    # Items planned from the first pages were stopped: nothing is left to run.
    statuses = set(WorkItem.objects.filter(job=job).values_list("status", flat=True))
    assert statuses == {WorkItem.Status.CANCELLED}


@pytest.mark.django_db
def test_a_job_on_an_extracted_document_plans_in_one_pass_as_before(
    alice: Any, agent: Any, ready_document: Any
) -> None:
    document = ready_document(alice, pages=4)
    job = job_create(owner=alice, count=12, agents=[agent], documents=[document], question_types=TYPES)
    job_prepare(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.GENERATING
    assert _quotas(job) == {"factual": 8, "procedural": 4}
    assert not Document.objects.get(pk=document.pk).chunks_partial


@pytest.mark.django_db
def test_pages_are_visible_while_the_document_is_read(alice: Any, geotopo: Document) -> None:
    progress: list[tuple[str, int]] = []

    def watch() -> None:
        document = Document.objects.get(pk=geotopo.pk)
        progress.append((document.progress_label, document.pages.count()))

    document = document_services.document_extract(document_id=geotopo.pk, on_progress=watch)
    assert document.status == Document.Status.READY and document.page_count == 117
    assert document.progress_label == ""
    reading = [(label, stored) for label, stored in progress if label]
    assert len(reading) >= 3, progress
    assert all(label == f"p. {stored} of 117" for label, stored in reading)
    assert [stored for _, stored in reading] == sorted(stored for _, stored in reading)


@pytest.mark.django_db
def test_the_job_page_says_which_page_is_being_read(client: Any, alice: Any, agent: Any, geotopo: Document) -> None:
    job = job_create(owner=alice, count=5, agents=[agent], documents=[geotopo])
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.CHUNKING)
    _read_by_another_worker(geotopo, _pages(GEOTOPO.name), 12)
    client.force_login(alice)
    page = client.get(reverse("training:progress", args=[job.pk]))
    assert page.status_code == 200
    assert "p. 12 of 117" in page.content.decode()


# --- on real workers -----------------------------------------------------------------------------


@pytest.fixture
def worker_env(fake_llm: Any, tmp_path: Path) -> dict[str, str]:
    return fake_model_worker_env(fake_llm, tmp_path, MASSCER_JUDGE_DEFAULT="false")


@contextmanager
def _workers(env: dict[str, str], log: Path) -> Iterator[None]:
    """The Procfile's topology on two cores: a prefork ingest worker with two processes (one
    reads the PDF, the other plans from its pages) and a threads llm worker."""
    with (
        celery_worker(env, queues="ingest", pool="prefork", concurrency=2, name="ingest", log_path=log),
        celery_worker(env, queues="llm", pool="threads", concurrency=8, name="llm", log_path=log),
    ):
        yield


class _DocumentWatch(threading.Thread):
    """Samples the newest document's status every 20 ms: the last moment it was seen being read
    is a lower bound on the end of its extraction."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.last_extracting: float | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.02):
                row = Document.objects.order_by("-pk").values_list("status", flat=True).first()
                if row == Document.Status.EXTRACTING:
                    self.last_extracting = time.time()
        finally:
            connection.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_first_model_call_comes_before_the_pdf_is_read_and_the_job_makes_exactly_n(
    worker_env: dict[str, str], fake_llm: Any, tmp_path: Path
) -> None:
    fake_llm.configure(latency=1.0)
    log = tmp_path / "workers.log"
    watch = _DocumentWatch()
    with _workers(worker_env, log):
        watch.start()
        try:
            result = manage(
            "train", str(GEOTOPO), "--count", "30", "--types", "factual=2,procedural=1", "--agent", "support",
                "--json", env=worker_env, timeout=240,
            )  # fmt: skip
        finally:
            watch.stop.set()
            watch.join(5)
    assert result.returncode == 0, result.stderr + result.stdout + log.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    first_call = min(call["started"] for call in fake_llm.calls)
    assert watch.last_extracting is not None and first_call < watch.last_extracting, (
        f"the first model call came {first_call - (watch.last_extracting or 0):+.2f} s after the last "
        "moment the document was seen being read"
    )
    assert summary["status"] == "completed" and summary["completions_created"] == 30, json.dumps(summary)
    job = TrainingJob.objects.get(pk=summary["job_id"])
    made = Counter(Completion.objects.filter(job=job).values_list("question_type", flat=True))
    assert made == {"factual": 20, "procedural": 10}
    _assert_whole_text_chunks(job.documents.get())


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_pdf_that_breaks_midway_fails_the_job_and_keeps_what_was_made(
    worker_env: dict[str, str], fake_llm: Any, tmp_path: Path
) -> None:
    # GeoTopo passes 50,000 tokens around page 90: the document breaks there, a second or so
    # after the first items were planned and made (they are kept; items still running then
    # are stopped with the job).
    # One extraction process: two read the whole file in about the time the first items take.
    env = {**worker_env, "MASSCER_MAX_DOCUMENT_TOKENS": "50000", "MASSCER_EXTRACT_PROCESSES": "1"}
    fake_llm.configure(latency=0.05)
    log = tmp_path / "workers.log"
    with _workers(env, log):
        result = manage("train", str(GEOTOPO), "--count", "40", "--agent", "support", "--json", env=env, timeout=240)
    assert result.returncode == 1, result.stderr + result.stdout + log.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    assert "more than 50,000 tokens" in summary["error"] and "are kept" in summary["error"]
    job = TrainingJob.objects.get(pk=summary["job_id"])
    assert not WorkItem.objects.filter(job=job, status__in=[WorkItem.Status.PENDING, WorkItem.Status.RUNNING])
    # What was made from the first pages stays, counted on the job.
    kept = Completion.objects.filter(job=job).count()
    assert kept > 0 and kept == summary["completions_created"], log.read_text()[-6000:]
