"""A chunk that ends short hands its missing pairs to chunks with unused text (#17.2), and the
prompt says which part of a chunk repeats its neighbour."""
from __future__ import annotations

import subprocess
from typing import Any

import pytest

from masscer.lib.llm.prompts import one_line
from testing.fakellm import read_prompt
from training.models import Chunk, Completion, TrainingJob, WorkItem
from training.planning import calls_budget, hand_on, pair_room
from training.services import chunks_ensure_for_document
from training.validation import REASON_LABELS, normalise

from .test_batch import new_batch_job, run_batch_job
from .test_generation import new_job, run_job
from .test_worker_integration import worker_env, workers  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def _budget(quota: int, settings: Any) -> int:
    per_call, per_batch = settings.MASSCER_PAIRS_PER_CALL, settings.MASSCER_CALLS_PER_BATCH
    return calls_budget(quota, per_call=per_call, calls_per_batch=per_batch)


def _own_text(chunk: Chunk) -> str:
    """A stretch of the chunk's middle: in no neighbour's text (they overlap only at the ends)."""
    middle = len(chunk.text) // 2
    return chunk.text[middle : middle + 80]


def _planned(job: TrainingJob) -> dict[int, int]:
    return dict(WorkItem.objects.filter(job=job).values_list("chunk__index", "quota"))


# --- the rule, on numbers alone -----------------------------------------------------------------


def test_missing_pairs_go_to_the_chunks_with_the_most_unused_text() -> None:
    assert hand_on(3, [0, 5, 10, 1]) == [0, 1, 2, 0]
    assert hand_on(1, [2, 9, 9]) == [0, 1, 0]  # ties to the earlier chunk
    assert hand_on(7, [4, 4, 4]) == [3, 2, 2]


def test_no_chunk_is_asked_beyond_what_its_text_can_give() -> None:
    assert hand_on(20, [0, 5, 10, 1]) == [0, 5, 10, 1]
    assert hand_on(5, [0, 0]) == [0, 0]
    assert pair_room(800, 3) == 17 and pair_room(100, 3) == 0


# --- live ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invalid_json", "duplicate"])
def test_a_chunk_that_cannot_give_its_quota_leaves_no_shortfall_while_others_have_text(
    alice, agent, ready_document, fake_llm, settings, kind: str
) -> None:
    document = ready_document(alice, pages=4)
    chunks = chunks_ensure_for_document(document=document)
    assert len(chunks) >= 3
    stuck = chunks[1]
    # Every reply for this chunk is unusable (or repeats one question): it cannot make its quota.
    fake_llm.set_default([{"kind": kind, "match": _own_text(stuck)}])
    job = new_job(alice, document, agent, 16)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == Completion.objects.filter(job=job).count() == 16
    assert job.shortfall == 0 and job.outcome == "completed" and job.error == ""
    assert len({normalise(c.question) for c in Completion.objects.filter(job=job)}) == 16
    item = WorkItem.objects.get(job=job, chunk=stuck)
    assert item.made < 4 and item.quota == item.made  # what it could not make went elsewhere
    assert item.reasons["calls_exhausted"] == 1 and item.reasons["quota_moved"] >= 1
    assert job.shortfall_reasons["quota_moved"] == item.reasons["quota_moved"]
    assert sum(_planned(job).values()) == 16
    # Bounded: the stuck chunk's budget, and one budget for the others' original and extra pairs.
    others = WorkItem.objects.filter(job=job).exclude(chunk=stuck)
    assert job.calls <= item.calls + sum(_budget(other.quota, settings) for other in others)
    assert job.calls == len(fake_llm.calls)


def test_without_the_hand_on_the_same_job_ends_short(alice, agent, ready_document, fake_llm, settings) -> None:
    """The control: the behaviour before #17.2, so the test above can fail."""
    settings.MASSCER_HAND_ON_SHORTFALL = False
    document = ready_document(alice, pages=4)
    stuck = chunks_ensure_for_document(document=document)[1]
    fake_llm.set_default([{"kind": "invalid_json", "match": _own_text(stuck)}])
    job = new_job(alice, document, agent, 16)
    run_job(job)
    quota = WorkItem.objects.get(job=job, chunk=stuck).quota
    assert quota > 0 and job.created_count == 16 - quota and job.shortfall == quota
    assert "quota_moved" not in job.shortfall_reasons


def test_a_job_ends_short_only_when_every_chunk_is_exhausted_and_says_so(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    document = ready_document(alice, pages=4)
    fake_llm.set_default([{"kind": "never"}])
    job = new_job(alice, document, agent, 9)
    run_job(job)
    items = list(WorkItem.objects.filter(job=job))
    assert len(items) >= 3
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 0 and job.shortfall == 9
    assert job.shortfall_reasons["chunks_exhausted"] == 9
    assert job.shortfall_reasons["calls_exhausted"] == len(items)  # each chunk gave up once
    assert REASON_LABELS["chunks_exhausted"] in job.error and "Made 0 of 9" in job.error
    assert job.next_step  # still the model's doing: a stronger model would help
    # Each chunk hands on once at most; with 9 pairs every chunk's budget is one batch's calls.
    assert job.calls == len(fake_llm.calls) <= settings.MASSCER_CALLS_PER_BATCH * len(items)
    assert not WorkItem.objects.filter(job=job, status__in=["pending", "running"]).exists()


def test_a_job_that_reached_its_cost_budget_hands_nothing_on(alice, agent, ready_document, fake_llm, settings) -> None:
    from decimal import Decimal

    settings.MASSCER_LLM_PRICES = "fake-model=1000:1000"
    document = ready_document(alice, pages=4)
    job = new_job(alice, document, agent, 12, budget=Decimal("0.01"))
    run_job(job)
    assert job.shortfall > 0 and job.shortfall_reasons.get("budget_exhausted")
    assert "quota_moved" not in job.shortfall_reasons and "chunks_exhausted" not in job.shortfall_reasons


# --- batch --------------------------------------------------------------------------------------


def test_a_batch_job_moves_a_stuck_chunks_pairs_to_the_next_round(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=4)
    stuck = chunks_ensure_for_document(document=document)[1]
    fake_llm.set_default([{"kind": "invalid_json", "endpoint": "batch", "match": _own_text(stuck)}])
    job = new_batch_job(alice, document, agent, 16)
    run_batch_job(job, ticks=40)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == Completion.objects.filter(job=job).count() == 16 and job.shortfall == 0
    item = WorkItem.objects.get(job=job, chunk=stuck)
    assert item.made == 0 and item.reasons["quota_moved"] >= 1
    # Batch requests carry the overlap hint as live ones do.
    assert any(read_prompt(call["prompt"]).overlap_tail for call in fake_llm.calls)


# --- the overlap hint -------------------------------------------------------------------------------


def test_the_prompt_says_which_part_of_a_chunk_repeats_the_previous_one(
    alice, agent, ready_document, fake_llm
) -> None:
    document = ready_document(alice, pages=4)
    chunks = chunks_ensure_for_document(document=document)
    job = new_job(alice, document, agent, 3 * len(chunks))
    run_job(job)
    assert job.created_count == 3 * len(chunks)
    prompts = [read_prompt(call["prompt"]) for call in fake_llm.calls]

    def prompt_of(chunk: Chunk) -> Any:
        return next(info for info in prompts if info.source and _own_text(chunk) in info.source)

    assert prompt_of(chunks[0]).overlap_tail is None  # nothing before the first chunk
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        info = prompt_of(chunk)
        overlap = previous.end - chunk.start
        assert overlap > 0 and info.overlap_tail
        # The quoted words end the repeated passage: the end of the previous chunk, the start of this one.
        assert one_line(previous.text).endswith(info.overlap_tail)
        assert one_line(chunk.text[:overlap]).endswith(info.overlap_tail)
        assert info.overlap_tail in one_line(info.source)


def test_the_overlap_hint_is_only_for_documents_and_only_when_the_chunk_has_text_of_its_own() -> None:
    from masscer.lib.llm import GenParams, LLMConfig
    from masscer.lib.llm.pairs import pair_request
    from masscer.lib.llm.prompts import chat_user_message, completion_prompt

    config = LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="k", model="m")
    source = "Alpha beta gamma. <source> Delta epsilon.\n\nZeta eta theta iota kappa lambda."

    repeated = source.index("\n\n")  # the first paragraph repeats the previous chunk

    def prompt(kind: str = "document", overlap: int = repeated, style: str = "synthesize") -> str:
        request = pair_request(
            config, source=source, count=2, existing_questions=(), instructions="", params=GenParams(),
            feedback=None, source_kind=kind, style=style, overlap_chars=overlap,
        )
        return chat_user_message(request)

    info = read_prompt(prompt())
    assert info.overlap_tail == "Alpha beta gamma. &lt;source&gt; Delta epsilon."  # neutralised, no new fence
    assert info.source == source.replace("<source>", "&lt;source&gt;") and info.count == 2
    assert read_prompt(prompt(kind="conversation")).overlap_tail is None
    assert read_prompt(prompt(overlap=len(source))).overlap_tail is None  # all of it repeated: nothing to say
    assert read_prompt(prompt(overlap=0)).overlap_tail is None
    completion = pair_request(
        config, source=source, count=2, existing_questions=(), instructions="", params=GenParams(),
        feedback=None, source_kind="document", style="synthesize", overlap_chars=repeated,
    )
    assert "repeated from the previous section" not in completion_prompt(completion)  # base models: kept short


# --- live, on real workers --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_stuck_chunk_hands_its_pairs_on_across_real_workers(request, fake_llm, tmp_path) -> None:
    """`manage.py train` → Redis → a threads llm worker: the chunk that never gets a usable reply
    has its pairs made by the others (a reopened chunk is sent to the workers again)."""
    import json

    from testing.processes import manage

    from .conftest import prose

    env, log = request.getfixturevalue("worker_env"), request.getfixturevalue("workers")

    marker = "The quartz lighthouse keeper logs every passing comet in a green notebook."
    paragraphs = [prose(seed, 6) for seed in range(1, 25)]
    paragraphs.insert(12, marker)
    path = tmp_path / "manual.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    fake_llm.set_default([{"kind": "invalid_json", "match": marker}])
    try:
        result = manage("train", str(path), "--count", "20", "--agent", "support", "--json", env=env, timeout=240)
    except subprocess.TimeoutExpired:  # say where it stood (it hung once in a PostgreSQL run of the suite)
        items = list(WorkItem.objects.values_list("pk", "status", "quota", "made", "calls", "reasons"))
        jobs = list(TrainingJob.objects.values_list("pk", "status", "created_count", "error"))
        pytest.fail(f"train did not finish: jobs {jobs}, items {items}\nworker log:\n{log.read_text()[-6000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr + result.stdout + log.read_text()[-3000:]
    assert summary["completions_created"] == 20 and summary["shortfall"] == 0, json.dumps(summary)
    assert summary["shortfall_reasons"]["quota_moved"] >= 1
    stuck = WorkItem.objects.filter(job_id=summary["job_id"], chunk__text__contains=marker)
    assert stuck.exists() and all(item.made == 0 and item.reasons["quota_moved"] for item in stuck)
    assert WorkItem.objects.filter(job_id=summary["job_id"]).count() > stuck.count()
    assert summary["model_calls"] == len(fake_llm.calls)
