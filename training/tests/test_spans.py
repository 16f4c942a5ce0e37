"""Fewer calls per pair (#17.4): a work item reads a span of consecutive small chunks, asks for
at least MASSCER_MIN_PAIRS_PER_CALL pairs in one call, and stores each pair on the chunk its
evidence comes from."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from masscer.lib.tokens import count_tokens, join_pages
from testing.fakellm import read_prompt
from training.estimate import estimate
from training.models import Chunk, Completion, TrainingJob, WorkItem
from training.planning import allocate, group_spans
from training.services import spans
from training.services.jobs import job_prepare
from training.validation import evidence_in_source

from .test_batch import new_batch_job, run_batch_job
from .test_generation import new_job, run_job

CHUNK_TOKENS = 120
SPAN_TOKENS = 4 * CHUNK_TOKENS


@pytest.fixture
def small_chunks(settings: Any) -> None:
    """Chunks of 120 tokens, up to four of them per call, at least five pairs per call."""
    settings.MASSCER_CHUNK_TOKENS = CHUNK_TOKENS
    settings.MASSCER_CHUNK_OVERLAP = 12
    settings.MASSCER_SPAN_MAX_TOKENS = SPAN_TOKENS
    settings.MASSCER_MIN_PAIRS_PER_CALL = 5
    settings.MASSCER_PAIRS_PER_CALL = 10


def one_source(n: int) -> list[tuple[str, int]]:
    return [("doc", i) for i in range(n)]


# --- planning (numbers only) ---------------------------------------------------------------------


def test_small_chunks_are_grouped_until_a_call_asks_for_the_minimum() -> None:
    tokens = [100] * 30
    spans_ = group_spans(tokens, one_source(30), count=60, min_pairs=5, max_tokens=1000)
    # Each chunk's share is 2 pairs: three chunks make a call of 6 (two would make only 4).
    assert [len(span) for span in spans_] == [3] * 10
    quotas = allocate(60, [sum(tokens[s.start : s.stop]) for s in spans_])
    assert quotas == [6] * 10 and sum(quotas) == 60


def test_a_span_stays_within_the_token_cap_and_inside_one_source() -> None:
    tokens = [300, 250, 400, 100, 100, 500, 90, 90]
    keys = [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1), ("b", 5), ("b", 6)]
    spans_ = group_spans(tokens, keys, count=8, min_pairs=10, max_tokens=600)
    assert all(sum(tokens[s.start : s.stop]) <= 600 for s in spans_)
    assert all(len({keys[i][0] for i in s}) == 1 for s in spans_)  # never across sources
    assert [list(s) for s in spans_] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # nor across a gap (b1 -> b5)
    # Every chunk is in exactly one span, in order.
    assert [i for s in spans_ for i in s] == list(range(8))


def test_chunks_big_enough_for_the_minimum_stay_alone() -> None:
    spans_ = group_spans([800] * 5, one_source(5), count=300, min_pairs=5, max_tokens=3200)
    assert [len(s) for s in spans_] == [1] * 5
    unlimited = group_spans([100] * 4, one_source(4), count=2, min_pairs=5, max_tokens=0)
    assert unlimited == [range(i, i + 1) for i in range(4)]


def test_fewer_pairs_than_chunks_still_cover_the_whole_text_when_the_cap_allows() -> None:
    tokens = [100] * 20
    spans_ = group_spans(tokens, one_source(20), count=5, min_pairs=5, max_tokens=400)
    quotas = allocate(5, [sum(tokens[s.start : s.stop]) for s in spans_])
    covered = [i for s, q in zip(spans_, quotas, strict=True) if q for i in s]
    assert sum(quotas) == 5 and covered == list(range(20))
    # With too few pairs for that, the items are spread over the text, each as large as allowed.
    spans_ = group_spans([100] * 40, one_source(40), count=4, min_pairs=5, max_tokens=400)
    quotas = allocate(4, [400] * len(spans_))
    used = [s for s, q in zip(spans_, quotas, strict=True) if q]
    assert len(used) == 4 and all(len(s) == 4 for s in used)
    assert used[0].start > 0 and used[-1].stop < 40 and used[1].start - used[0].stop > 0  # spread, not the start


def test_the_estimate_counts_calls_per_span() -> None:
    tokens = [100] * 30
    alone = estimate(count=60, chunk_tokens=tokens, pairs_per_call=10, calls_per_batch=3)
    grouped = estimate(
        count=60,
        chunk_tokens=tokens,
        pairs_per_call=10,
        calls_per_batch=3,
        sources=[1] * 30,
        min_pairs=5,
        span_tokens=1000,
    )
    assert (alone.calls, grouped.calls) == (30, 10)
    assert grouped.chunks_used == 30 and grouped.planned == 60
    # Two documents: no span joins them; a conversation's chunks (None) stay alone.
    mixed = estimate(
        count=12,
        chunk_tokens=[100] * 6,
        pairs_per_call=10,
        calls_per_batch=3,
        sources=[1, 1, 1, 2, None, None],
        min_pairs=5,
        span_tokens=1000,
    )
    assert mixed.calls == 4  # [1 1 1], [2], [conv], [conv]


# --- jobs ----------------------------------------------------------------------------------------


def item_of(completion: Completion, items: list[WorkItem]) -> WorkItem:
    index = completion.chunk.index
    found = [i for i in items if i.chunk.index <= index < i.chunk.index + i.span]
    assert len(found) == 1, f"{completion.chunk} is in {len(found)} spans"
    return found[0]


def assert_completions_fit_their_spans(job: TrainingJob) -> None:
    items = list(WorkItem.objects.filter(job=job).select_related("chunk"))
    completions = list(Completion.objects.filter(job=job).select_related("chunk"))
    made: Counter[int] = Counter()
    ordinals: dict[tuple[int, str], list[int]] = defaultdict(list)
    for completion in completions:
        assert evidence_in_source(completion.evidence, completion.chunk.text)  # stored where its evidence is
        made[item_of(completion, items).pk] += 1
        ordinals[(completion.chunk_id, completion.question_type)].append(completion.ordinal)
    assert all(sorted(found) == list(range(len(found))) for found in ordinals.values())
    assert all(item.made == item.quota == made[item.pk] for item in items)
    assert sum(item.quota for item in items) == job.requested_count


def test_a_job_over_small_chunks_makes_exactly_n_with_fewer_calls(
    alice, agent, ready_document, fake_llm, small_chunks
) -> None:
    document = ready_document(alice, pages=4)
    job = new_job(alice, document, agent, 40)
    run_job(job)
    chunks = list(Chunk.objects.filter(document=document).order_by("index"))
    items = list(WorkItem.objects.filter(job=job).select_related("chunk", "job"))
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 40 and job.shortfall == 0
    assert len(chunks) >= 12 and len(items) <= len(chunks) / 2
    # One call per span instead of one per chunk (each chunk's share here is under 5 pairs).
    assert job.calls == len(fake_llm.calls) == len(items) < len(chunks)
    # Only a document's last span may ask for fewer (nothing follows it to join).
    assert sum(call["requested_count"] < 5 for call in fake_llm.calls) <= 1
    assert_completions_fit_their_spans(job)
    # The model saw each span's text once: the document's text from the first chunk to the
    # last, without the overlaps repeated, within the token cap.
    text, _ = join_pages(list(document.pages.order_by("number").values_list("text", flat=True)))
    sent = {read_prompt(call["prompt"]).source for call in fake_llm.calls}
    for item in items:
        span = chunks[item.chunk.index : item.chunk.index + item.span]
        expected = text[span[0].start : span[-1].end]
        assert " ".join(expected.split()) in {" ".join((source or "").split()) for source in sent}
        assert count_tokens(spans.span_source(item).text) <= SPAN_TOKENS
    first = min(items, key=lambda item: item.chunk.index)
    assert spans.span_label(first) == f"chunks 1–{first.span}"  # as the admin lists it


def test_fewer_pairs_than_chunks_read_the_whole_document(alice, agent, ready_document, fake_llm, small_chunks) -> None:
    document = ready_document(alice, pages=3)
    job = new_job(alice, document, agent, 6)
    run_job(job)
    chunks = Chunk.objects.filter(document=document).count()
    items = list(WorkItem.objects.filter(job=job).select_related("chunk"))
    assert chunks > 6 and job.created_count == 6
    covered = sorted(i for item in items for i in range(item.chunk.index, item.chunk.index + item.span))
    assert covered == list(range(chunks))
    assert_completions_fit_their_spans(job)


def test_each_pair_is_stored_on_the_chunk_its_evidence_comes_from(
    alice, agent, ready_document, fake_llm, small_chunks
) -> None:
    document = ready_document(alice, pages=1, sentences_per_page=18)
    job = new_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.select_related("chunk").get(job=job)
    first, second, third = list(Chunk.objects.filter(document=document).order_by("index"))[:3]
    assert item.span >= 3
    text, _ = join_pages([document.pages.get().text])
    # A quote from the second chunk's own part, one from the first chunk, and one across the
    # boundary of the second and third chunks (in neither whole: it goes where it starts).
    own = " ".join(text[first.end + 5 : third.start].split()[1:-1])
    opening = " ".join(first.text.split()[:6])
    across = " ".join(text[third.start - 40 : second.end + 40].split()[1:-1])
    assert not evidence_in_source(across, second.text) and not evidence_in_source(across, third.text)
    assert evidence_in_source(own, second.text) and not evidence_in_source(own, first.text)
    pairs = [
        {"question": f"What does the manual say in part {n}?", "answer": "It explains it.", "evidence": quote}
        for n, quote in enumerate([own, opening, across], start=1)
    ]
    fake_llm.script([{"kind": "raw", "text": json.dumps({"pairs": pairs})}])
    run_job(job)
    stored = {c.evidence: c for c in Completion.objects.filter(job=job)}
    assert job.created_count == 3 and job.calls == 1
    assert [(stored[q].chunk_id, stored[q].ordinal) for q in (own, opening, across)] == [
        (second.pk, 0),
        (first.pk, 0),
        (second.pk, 1),
    ]


def test_a_batch_job_asks_over_spans_too(alice, agent, ready_document, fake_llm, small_chunks) -> None:
    document = ready_document(alice, pages=4)
    job = new_batch_job(alice, document, agent, 40)
    run_batch_job(job)
    chunks = Chunk.objects.filter(document=document).count()
    items = WorkItem.objects.filter(job=job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 40
    # One request per span in the first round (a top-up round may follow: requests of one round
    # do not see each other's questions, so neighbours can offer the same one).
    first_round = fake_llm.file_content(fake_llm.batches()[0]["input_file_id"]).splitlines()
    assert len(first_round) == items.count() <= chunks / 2
    assert len(fake_llm.calls) == job.calls < chunks
    assert_completions_fit_their_spans(job)


def test_the_train_dialogs_estimate_predicts_the_calls(
    client, alice, agent, ready_document, fake_llm, small_chunks
) -> None:
    document = ready_document(alice, pages=4)
    job = new_job(alice, document, agent, 40)
    job_prepare(job_id=job.pk)  # the document is split: the estimate reads its real chunks
    client.force_login(alice)
    predicted = client.get(f"/jobs/estimate/?document={document.pk}&count=40").context["estimate"]
    run_job(job)
    assert job.created_count == 40
    assert predicted.calls == job.calls < predicted.chunks_used == Chunk.objects.filter(document=document).count()


def test_the_admin_lists_the_chunks_each_work_item_reads(client, alice, agent, ready_document, small_chunks) -> None:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    document = ready_document(alice, pages=2)
    job = new_job(alice, document, agent, 10)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.select_related("chunk").get(job=job, chunk__index=0)
    client.force_login(alice)
    body = client.get("/admin/training/workitem/").content.decode()
    assert item.span > 1 and f"chunks 1–{item.span} of document {document.pk}" in body


def test_the_estimate_plans_each_question_type_apart_as_the_job_does(
    client, alice, agent, ready_document, fake_llm, small_chunks
) -> None:
    """Each type has its own work items (multi-hop: neighbouring pairs): the dialog's estimate
    and `train --estimate` count their calls, which are more than one type's."""
    document = ready_document(alice, pages=4)
    shares = {"factual": 2, "procedural": 1, "multi_hop": 1}
    job = new_job(alice, document, agent, 40, question_types=shares)
    job_prepare(job_id=job.pk)
    client.force_login(alice)
    url = f"/jobs/estimate/?document={document.pk}&count=40"
    untyped = client.get(url).context["estimate"]
    typed = client.get(url + "&type_factual=2&type_procedural=1&type_multi_hop=1").context["estimate"]
    run_job(job)
    assert job.created_count == 40
    assert typed.calls == job.calls > untyped.calls
