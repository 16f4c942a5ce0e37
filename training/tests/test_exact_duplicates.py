"""Exact duplicate questions in a job are impossible, also when workers store at the same moment.

The duplicate check before a store reads the job's questions as this process knows them; two
threads (or processes) that both checked before either stored used to store the same question
twice. The (job, question key) unique constraint and an insert that skips a clashing row make
the check and the write one step: the second store records a `duplicate` rejection instead and
its work item tops up like after any rejected pair.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from training import hotsql, services
from training.generation import work_item_run
from training.models import Completion, TrainingJob, WorkItem
from training.services import completion_review, completions, job_create, job_prepare
from training.services import review as review_services
from training.validation import normalise, question_key
from workspaces.services import api_token_create

from .factories import make_chunk, make_completions, make_document, make_job, numbered
from .test_admin import client_for, list_edit, team  # noqa: F401 - team is a fixture

pytestmark = pytest.mark.django_db
# A real connection per thread: on PostgreSQL the stores really run at the same time; SQLite
# serialises writers (IMMEDIATE transactions), which still lets every thread check first.
concurrent = pytest.mark.django_db(transaction=True)

SHARED = "What does the warranty cover?"
# The same question for the duplicate check: case, spacing and Unicode compatibility forms aside.
SPELLINGS = [
    SHARED,
    "what does the warranty cover?",
    "WHAT  DOES THE WARRANTY\tCOVER?",
    "What does the ＷＡＲＲＡＮＴＹ cover?",  # full-width letters
]


def in_threads(count: int, target: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run `target(i, barrier)` in `count` threads (each with its own database connection)."""
    barrier = threading.Barrier(count, timeout=30)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index, barrier)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return results


def job_with_items(owner: Any, agent: Any, document: Any, count: int) -> tuple[TrainingJob, list[WorkItem]]:
    job = job_create(owner=owner, count=count, agents=[agent], documents=[document])
    job_prepare(job_id=job.pk)
    items = list(WorkItem.objects.filter(job=job).select_related("job", "chunk").order_by("chunk__index"))
    return job, items


def dense_ordinals(job: TrainingJob) -> bool:
    by_chunk: dict[int, list[int]] = {}
    for chunk_id, ordinal in Completion.objects.filter(job=job).values_list("chunk_id", "ordinal"):
        by_chunk.setdefault(chunk_id, []).append(ordinal)
    return all(sorted(ordinals) == list(range(len(ordinals))) for ordinals in by_chunk.values())


@concurrent
def test_threads_storing_one_question_at_the_same_moment_store_it_once(alice, agent, ready_document) -> None:
    document = ready_document(alice, pages=6)
    job, items = job_with_items(alice, agent, document, 24)
    threads = len(SPELLINGS)
    assert len(items) >= threads
    now = timezone.now()
    claims = [hotsql.claim(item.pk, now=now, lease_until=now + timedelta(minutes=5)) for item in items[:threads]]

    def store(index: int, barrier: threading.Barrier) -> int:
        item = WorkItem.objects.select_related("job", "chunk").get(pk=items[index].pk)
        # The shared question first: a skipped row must not leave a gap in the chunk's ordinals.
        pairs = [(SPELLINGS[index], "Two years.", "evidence"), (f"Which part number is listed {index}?", "A.", "e")]
        barrier.wait()
        return services.store_completions(
            item=item, claim=claims[index], pairs=pairs, model="m", redacted=False, reasons=Counter(), calls=1
        )

    written = in_threads(threads, store)

    shared = [c for c in Completion.objects.filter(job=job) if normalise(c.question) == normalise(SHARED)]
    assert len(shared) == 1
    assert sorted(written) == [1] * (threads - 1) + [2]
    total = Completion.objects.filter(job=job).count()
    assert total == threads + 1
    job.refresh_from_db()
    assert job.created_count == total and job.calls == threads
    stored_items = {item.pk: item for item in WorkItem.objects.filter(pk__in=[i.pk for i in items[:threads]])}
    for item in stored_items.values():
        assert item.made == Completion.objects.filter(job=job, chunk_id=item.chunk_id).count()
    losers = [item for item in stored_items.values() if item.made == 1]
    assert len(losers) == threads - 1
    assert all(item.reasons == {"duplicate": 1} for item in losers)
    assert all(item.samples and item.samples[0]["reason"] == "duplicate" for item in losers)
    assert dense_ordinals(job)
    # Every stored completion went to the job's agent, and only those.
    assert set(agent.completions.values_list("pk", flat=True)) == set(
        Completion.objects.filter(job=job).values_list("pk", flat=True)
    )


def _reply(chunk_text: str, questions: list[str], evidence: str) -> dict[str, Any]:
    """The reply to the call about this chunk (whichever thread makes it first)."""
    pairs = [{"question": q, "answer": "Yes.", "evidence": evidence} for q in questions]
    return {"kind": "raw", "match": chunk_text[:80], "text": json.dumps({"pairs": pairs})}


def _shared_sentence(first: str, second: str) -> str:
    """A sentence both chunks hold (their overlap)."""
    sentences = [s.strip() + "." for s in second.split(".") if len(s.strip()) > 20]
    return next(s for s in sentences if s in first)


OWN = [
    "Which river is named in the opening lines?",
    "How many bridges does the report count?",
    "When was the harbour engine replaced?",
    "Who signed the tariff treaty?",
    "Where is the glacier sensor mounted?",
    "What voltage does the charger deliver?",
    "Why was the vineyard ledger archived?",
    "Which enzyme breaks down glucose here?",
]


def run_storing_together(first: WorkItem, second: WorkItem, monkeypatch: Any) -> None:
    """Run both items in two threads that have both screened their reply against the job's
    questions before either stores: the interleaving that made the duplicates (pairs from
    chunks k and k+1 stored ms apart)."""
    barrier = threading.Barrier(2, timeout=30)
    waited = threading.local()
    store = completions.store_completions

    def store_together(**kwargs: Any) -> int:
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return store(**kwargs)

    monkeypatch.setattr(completions, "store_completions", store_together)
    outcomes = in_threads(2, lambda index, _: work_item_run(item_id=(first, second)[index].pk))
    monkeypatch.setattr(completions, "store_completions", store)
    assert outcomes == ["done", "done"]


@concurrent
def test_adjacent_chunks_returning_the_same_question_at_once_still_end_with_n_distinct(
    alice, agent, ready_document, fake_llm, settings, monkeypatch
) -> None:
    settings.MASSCER_SPARE_PAIR_AT_END = False  # exact request sizes
    # One call per chunk: losing a pair to another worker is not the model's failure, so the
    # loser still gets its top-up call.
    settings.MASSCER_CALLS_PER_BATCH = 1
    document = ready_document(alice, pages=6)
    job, items = job_with_items(alice, agent, document, 12)
    first, second = items[0], items[1]
    assert second.chunk.index == first.chunk.index + 1 and first.quota + second.quota <= len(OWN) + 2
    assert first.chunk.text[:80] not in second.chunk.text
    evidence = _shared_sentence(first.chunk.text, second.chunk.text)
    # Each chunk's first reply holds the same question (about their overlap) and its own ones,
    # as many as its quota.
    fake_llm.script(
        [
            _reply(first.chunk.text, [SHARED, *OWN[: first.quota - 1]], evidence),
            _reply(second.chunk.text, [SHARED.upper(), *OWN[len(OWN) - second.quota + 1 :]], evidence),
        ]
    )
    run_storing_together(first, second, monkeypatch)
    for item_id in WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True):
        work_item_run(item_id=item_id)

    job.refresh_from_db()
    questions = [normalise(q) for q in Completion.objects.filter(job=job).values_list("question", flat=True)]
    assert job.status == TrainingJob.Status.COMPLETED and job.shortfall == 0
    assert job.created_count == len(questions) == 12
    assert len(set(questions)) == 12
    assert questions.count(normalise(SHARED)) == 1
    both = list(WorkItem.objects.filter(pk__in=[first.pk, second.pk]))
    for item in both:
        assert item.made == item.quota == Completion.objects.filter(job=job, chunk_id=item.chunk_id).count()
    # One of the two lost the race: its pair is a recorded duplicate, and it asked once more.
    assert sorted((item.calls, item.reasons.get("duplicate", 0)) for item in both) == [(1, 0), (2, 1)]
    assert job.calls == len(fake_llm.calls) == len(items) + 1
    # Its top-up call said why, and showed the question it must not repeat.
    top_up = next(call for call in fake_llm.calls if "repeated earlier ones" in call["prompt"])
    assert normalise(SHARED) in normalise(top_up["prompt"])
    assert dense_ordinals(job)


@concurrent
def test_a_pair_lost_to_another_worker_is_replaced_by_a_spare_of_the_same_reply(
    alice, agent, ready_document, fake_llm, settings, monkeypatch
) -> None:
    """The same race, with one valid pair more than asked in each reply: the loser stores its
    extra pair instead of asking again (a second call would add a whole model latency)."""
    settings.MASSCER_SPARE_PAIR_AT_END = False
    settings.MASSCER_CALLS_PER_BATCH = 1
    document = ready_document(alice, pages=6)
    job, items = job_with_items(alice, agent, document, 12)
    first, second = items[0], items[1]
    assert first.quota + second.quota <= len(OWN)
    evidence = _shared_sentence(first.chunk.text, second.chunk.text)
    fake_llm.script(
        [
            _reply(first.chunk.text, [SHARED, *OWN[: first.quota]], evidence),
            _reply(second.chunk.text, [SHARED.upper(), *OWN[len(OWN) - second.quota :]], evidence),
        ]
    )
    run_storing_together(first, second, monkeypatch)
    for item_id in WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True):
        work_item_run(item_id=item_id)

    job.refresh_from_db()
    questions = [normalise(q) for q in Completion.objects.filter(job=job).values_list("question", flat=True)]
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == len(set(questions)) == 12
    both = list(WorkItem.objects.filter(pk__in=[first.pk, second.pk]))
    assert all(item.made == item.quota for item in both)
    # No top-up call: the loser's duplicate is recorded, its extra pair was stored after all.
    assert sorted((item.calls, item.reasons.get("duplicate", 0)) for item in both) == [(1, 0), (1, 1)]
    loser = next(item for item in both if item.reasons.get("duplicate"))
    assert "extra_dropped" not in loser.reasons
    assert job.calls == len(fake_llm.calls) == len(items)
    assert dense_ordinals(job)


# --- review edits ----------------------------------------------------------------------------


@pytest.fixture
def rows(alice) -> list[Completion]:
    """Three completions of one job (alice administers its workspace, so she reviews)."""
    job = make_job(alice)
    return make_completions(job, make_chunk(make_document(alice)), [(SHARED, "Two years."), *numbered(2)])


def test_an_edit_into_another_question_of_the_job_is_refused_clearly(alice, rows) -> None:
    shared, other, _ = rows
    with pytest.raises(ValidationError, match=f"already has this question \\(completion #{shared.pk}"):
        completion_review(completion=other, status="approved", reviewer=alice, question=SPELLINGS[2], answer="A.")
    other.refresh_from_db()
    assert other.status == "pending" and not other.edited and other.question_key == question_key(other.question)


def test_an_edit_moves_the_key_with_the_question(alice, rows) -> None:
    shared, other, _ = rows
    # Case and spacing only: the same question, the key stays.
    completion_review(completion=shared, status="approved", reviewer=alice, question=SPELLINGS[1], answer="Two.")
    shared.refresh_from_db()
    assert shared.question == SPELLINGS[1] and shared.question_key == question_key(SHARED)
    completion_review(completion=shared, status="approved", reviewer=alice, question="How long is it?", answer="2y.")
    shared.refresh_from_db()
    assert shared.question_key == question_key("How long is it?")
    # Its old question is free again; another job may always have it.
    completion_review(completion=other, status="approved", reviewer=alice, question=SHARED, answer="Two years.")
    elsewhere = make_completions(make_job(alice), make_chunk(make_document(alice, title="B")), [(SHARED, "x")])[0]
    assert elsewhere.question_key == Completion.objects.get(pk=other.pk).question_key


def test_an_edit_racing_another_into_the_same_question_is_a_validation_error(alice, rows, monkeypatch) -> None:
    shared, other, _ = rows
    # The other edit committed between this one's check and its write: the constraint decides.
    racing = lambda *, completion, question: question_key(question)  # noqa: E731
    monkeypatch.setattr(review_services, "completion_question_key", racing)
    with pytest.raises(ValidationError, match="already has this question"):
        completion_review(completion=other, status="approved", reviewer=alice, question=SHARED, answer="A.")
    assert Completion.objects.get(pk=other.pk).question == other.question


def test_the_review_page_says_why_an_edit_was_not_saved(client, alice, rows) -> None:
    _, other, _ = rows
    client.force_login(alice)
    url = f"/jobs/completions/{other.pk}/review/"
    edit = {"action": "approve", "question": SPELLINGS[3], "answer": "A."}
    response = client.post(url, edit, headers={"HX-Request": "true"})
    assert response.status_code == 400 and "already has this question" in response.content.decode()
    response = client.post(url, edit, follow=True)
    assert response.status_code == 200 and "already has this question" in response.content.decode()
    assert Completion.objects.get(pk=other.pk).question == other.question


def test_the_admin_form_shows_the_clash_on_the_question(client, alice, rows) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    _, other, _ = rows
    client.force_login(alice)
    data = {"question": SPELLINGS[1], "answer": other.answer, "status": "approved"}
    response = client.post(f"/admin/training/completion/{other.pk}/change/", data)
    assert response.status_code == 200  # the form again, with the error on the field
    assert "already has this question" in response.content.decode()
    assert Completion.objects.get(pk=other.pk).question == other.question


def test_the_api_answers_400_to_an_edit_into_a_duplicate(alice, rows) -> None:
    _, other, _ = rows
    token = api_token_create(user=alice, name="t")[1]
    response = Client().patch(
        f"/api/completions/{other.pk}",
        json.dumps({"question": SHARED.lower()}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400 and "already has this question" in response.json()["detail"]


# --- the migration ---------------------------------------------------------------------------

BEFORE_KEYS = ("training", "0006_workitem_samples")


@concurrent
def test_the_migration_keeps_repeats_stored_before_keys_were_unique(alice) -> None:
    """Databases made before the key may hold a job's question twice: nothing is lost, the first
    keeps the key and later repeats get a suffixed one, and new repeats are refused from then on."""
    job, chunk = make_job(alice), make_chunk(make_document(alice))
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("training")
    executor.migrate([BEFORE_KEYS])
    try:
        old = MigrationExecutor(connection).loader.project_state([BEFORE_KEYS]).apps
        Old = old.get_model("training", "Completion")
        questions = [SHARED, "Something else?", SPELLINGS[2], SPELLINGS[3], "SOMETHING ELSE?"]
        made = [
            Old.objects.create(job_id=job.pk, chunk_id=chunk.pk, ordinal=n, question=q, answer="a", evidence="e")
            for n, q in enumerate(questions)
        ]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    keys = dict(Completion.objects.filter(job=job).values_list("pk", "question_key"))
    first, second = question_key(SHARED), question_key("Something else?")
    assert [keys[row.pk] for row in made] == [
        first, second, f"{first}~{made[2].pk}", f"{first}~{made[3].pk}", f"{second}~{made[4].pk}"
    ]
    # A repeat made after the migration is skipped like any other.
    with pytest.raises(IntegrityError):
        make_completions(job, chunk, [(SHARED.upper(), "a")])


def test_the_admin_list_refuses_edits_into_one_question_without_a_500(bob, team) -> None:  # noqa: F811
    rows = sorted(team["rows"], key=lambda row: -row.pk)  # the list's order: newest first
    first, second = rows[0], rows[1]
    # Into a question the job has: the row's form shows the error.
    response = list_edit(client_for(bob), rows, {first.pk: {"question": second.question.upper()}})
    assert response.status_code == 200 and "already has this question" in response.content.decode()
    # Two rows into the same new question in one save: the first is saved, the second is reported.
    both = {row.pk: {"question": "Where is the warranty card?"} for row in (first, second)}
    response = list_edit(client_for(bob), rows, both)
    assert response.status_code == 302
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("not saved" in m and "already has this question" in m for m in messages)
    questions = list(Completion.objects.filter(pk__in=[first.pk, second.pk]).values_list("question", flat=True))
    assert questions.count("Where is the warranty card?") == 1
