"""The generation pipeline against the fake model server, driven through the real openai client."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from training.generation import RetryLater, work_item_run
from training.models import Completion, TrainingJob, WorkItem
from training.services import job_create, job_prepare, sweep
from training.validation import evidence_in_source, normalise

pytestmark = pytest.mark.django_db


def run_job(job: TrainingJob, rounds: int = 10) -> list[RetryLater]:
    """Do what the workers do, inline: prepare, then run every pending work item."""
    job_prepare(job_id=job.pk)
    retries: list[RetryLater] = []
    for _ in range(rounds):
        pending = list(WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).values_list("pk", flat=True))
        if not pending:
            break
        for item_id in pending:
            try:
                work_item_run(item_id=item_id)
            except RetryLater as exc:
                retries.append(exc)
    job.refresh_from_db()
    return retries


def new_job(owner: Any, document: Any, agent: Any, count: int, **params: Any) -> TrainingJob:
    return job_create(owner=owner, count=count, agents=[agent], documents=[document], **params)


def test_it_makes_exactly_n_grounded_completions(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=3)
    job = new_job(alice, document, agent, 13)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 13 and job.shortfall == 0
    completions = list(Completion.objects.filter(job=job).select_related("chunk"))
    assert len(completions) == 13
    assert sum(WorkItem.objects.filter(job=job).values_list("quota", flat=True)) == 13
    for completion in completions:
        assert evidence_in_source(completion.evidence, completion.chunk.text)
        assert completion.status == Completion.Status.PENDING
        assert list(completion.agents.all()) == [agent]
    questions = [normalise(c.question) for c in completions]
    assert len(set(questions)) == 13
    assert job.calls == len(fake_llm.calls)
    assert job.prompt_tokens > 0 and job.completion_tokens > 0


def test_it_tops_up_short_replies(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_SPARE_PAIR_AT_END = False  # exact request sizes (spares: see below)
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "short", "n": 2}, {"kind": "short", "n": 1}])
    job = new_job(alice, document, agent, 6)
    run_job(job)
    assert job.created_count == 6 and job.shortfall == 0
    counts = [call["requested_count"] for call in fake_llm.calls]
    assert counts == [6, 4, 3]


def test_it_drops_extras(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "extra", "n": 3}])
    job = new_job(alice, document, agent, 4)
    run_job(job)
    assert Completion.objects.filter(job=job).count() == 4
    assert job.calls == 1
    item = WorkItem.objects.get(job=job)
    assert item.reasons.get("extra_dropped") == 3


def test_it_asks_again_with_the_parse_error_when_output_is_not_json(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "invalid_json"}])
    job = new_job(alice, document, agent, 3)
    run_job(job)
    assert job.created_count == 3
    calls = fake_llm.calls
    assert len(calls) == 2
    assert "could not be parsed" in calls[1]["prompt"]
    assert WorkItem.objects.get(job=job).reasons["invalid_output"] == 1


def test_it_honours_retry_after_on_429_and_then_finishes(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 3}])
    job = new_job(alice, document, agent, 3)
    retries = run_job(job)
    assert [r.countdown for r in retries] == [3.0]
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3


def test_it_retries_server_errors_and_timeouts(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_TIMEOUT = 0.5
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "http_error", "status": 500}, {"kind": "timeout", "s": 3}])
    job = new_job(alice, document, agent, 3)
    retries = run_job(job)
    assert len(retries) == 2
    assert all(0 < r.countdown <= settings.MASSCER_RETRY_BACKOFF_MAX for r in retries)
    assert "timed out" in str(retries[1]).lower()
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3


def test_a_truncated_reply_is_retried_with_fewer_pairs(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_SPARE_PAIR_AT_END = False  # exact request sizes (spares: see below)
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "length", "n": 1}])
    job = new_job(alice, document, agent, 8)
    run_job(job)
    assert job.created_count == 8
    counts = [call["requested_count"] for call in fake_llm.calls]
    assert counts[0] == 8
    assert counts[1] <= 4  # halved after the truncation
    assert WorkItem.objects.get(job=job).reasons["truncated"] == 1


def test_a_model_that_never_delivers_ends_with_a_bounded_recorded_shortfall(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.set_default([{"kind": "never"}])
    job = new_job(alice, document, agent, 5)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 0 and job.shortfall == 5
    assert job.shortfall_reasons["invalid_output"] == settings.MASSCER_CALLS_PER_BATCH
    assert job.shortfall_reasons["calls_exhausted"] == 1
    assert len(fake_llm.calls) == settings.MASSCER_CALLS_PER_BATCH
    assert "Made 0 of 5" in job.error


def test_rejected_evidence_and_duplicates_are_not_stored(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "bad_evidence", "n": 2}, {"kind": "duplicate"}])
    job = new_job(alice, document, agent, 5)
    run_job(job)
    assert job.created_count == 5
    reasons = WorkItem.objects.get(job=job).reasons
    assert reasons["evidence_not_found"] == 2
    assert reasons["duplicate"] >= 1
    assert "not copied verbatim" in fake_llm.calls[1]["prompt"]


@pytest.mark.parametrize("spare", [True, False])
def test_near_the_end_of_a_job_a_spare_pair_saves_the_second_call(
    alice, agent, ready_document, fake_llm, settings, spare: bool
) -> None:
    """A rejected pair in the job's last stretch costs no extra call (the control, with the
    spare turned off, pays one); the job still has exactly N."""
    settings.MASSCER_SPARE_PAIR_AT_END = spare
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "bad_evidence", "n": 1}])
    job = new_job(alice, document, agent, 3)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3 and job.shortfall == 0
    item = WorkItem.objects.get(job=job)
    assert item.reasons["evidence_not_found"] == 1
    if spare:
        assert [call["requested_count"] for call in fake_llm.calls] == [4]
        assert job.calls == 1 and "spare_unused" not in item.reasons
    else:
        assert [call["requested_count"] for call in fake_llm.calls] == [3, 1]
        assert job.calls == 2


def test_a_larger_last_call_asks_for_a_spare_per_five_pairs(alice, agent, ready_document, fake_llm) -> None:
    """Two rejected pairs in a 7-pair call (a span's, say) cost no second call: it asked for 9."""
    fake_llm.script([{"kind": "bad_evidence", "n": 2}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 7)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 7
    assert [call["requested_count"] for call in fake_llm.calls] == [9]
    assert WorkItem.objects.get(job=job).reasons["evidence_not_found"] == 2


def test_only_the_last_wave_asks_for_a_spare_pair_and_an_unused_one_is_counted_as_such(
    alice, agent, ready_document, fake_llm
) -> None:
    document = ready_document(alice, pages=8)
    job = new_job(alice, document, agent, 13)
    run_job(job)  # one item at a time: the last two run with no more pending than running
    items = list(WorkItem.objects.filter(job=job).order_by("pk"))
    assert len(items) >= 4
    asked = [call["requested_count"] for call in fake_llm.calls]
    assert asked == [item.quota for item in items[:-2]] + [item.quota + 1 for item in items[-2:]]
    assert [item.reasons for item in items] == [{}] * (len(items) - 2) + [{"spare_unused": 1}] * 2
    assert job.created_count == Completion.objects.filter(job=job).count() == 13
    assert "extra_dropped" not in job.shortfall_reasons


def test_when_every_item_fits_in_the_endpoints_capacity_every_call_is_in_the_last_wave(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_LLM_MAX_CONCURRENCY = 64
    job = new_job(alice, ready_document(alice, pages=8), agent, 13)
    run_job(job)
    items = list(WorkItem.objects.filter(job=job).order_by("pk"))
    assert [call["requested_count"] for call in fake_llm.calls] == [item.quota + 1 for item in items]
    assert job.created_count == 13


def test_a_permanent_error_fails_the_job_with_the_reason(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.set_default([{"kind": "http_error", "status": 401, "message": "Incorrect API key {api_key}"}])
    job = new_job(alice, document, agent, 3)
    run_job(job)
    assert job.status == TrainingJob.Status.FAILED
    assert job.error
    assert "sk-test-secret-key" not in job.error
    assert len(fake_llm.calls) == 1


def test_an_unreachable_model_fails_clearly_after_the_configured_time(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_MODEL_UNREACHABLE_SECONDS = 60
    document = ready_document(alice, pages=1)
    fake_llm.set_default([{"kind": "http_error", "status": 503}])
    job = new_job(alice, document, agent, 3)
    retries = run_job(job, rounds=1)
    assert len(retries) == 1 and job.status == TrainingJob.Status.GENERATING
    # Pretend the model has been down for longer than allowed.
    WorkItem.objects.filter(job=job).update(unavailable_since=timezone.now() - timedelta(seconds=61))
    run_job(job, rounds=1)
    assert job.status == TrainingJob.Status.FAILED
    assert "Model unreachable for 1 minutes" in job.error


def test_running_a_chunk_task_twice_changes_nothing(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=2)
    job = new_job(alice, document, agent, 6)
    run_job(job)
    before = (Completion.objects.filter(job=job).count(), len(fake_llm.calls))
    for item_id in WorkItem.objects.filter(job=job).values_list("pk", flat=True):
        assert work_item_run(item_id=item_id) == "not-claimed"
    job_prepare(job_id=job.pk)
    assert (Completion.objects.filter(job=job).count(), len(fake_llm.calls)) == before


def test_a_redelivered_task_after_an_expired_lease_makes_only_what_is_missing(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_PAIRS_PER_CALL = 2
    document = ready_document(alice, pages=1)
    job = new_job(alice, document, agent, 6)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)
    # A worker made 2 of 6 and died: its item is still running with a lease that expired.
    fake_llm.script([{"kind": "good"}, {"kind": "http_error", "status": 500}])
    with pytest.raises(RetryLater):
        work_item_run(item_id=item.pk)
    WorkItem.objects.filter(pk=item.pk).update(
        status=WorkItem.Status.RUNNING, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert Completion.objects.filter(job=job).count() == 2
    calls_before = len([c for c in fake_llm.calls if c["status"] == 200])
    stats = sweep()
    assert stats["work_items"] == 1
    assert work_item_run(item_id=item.pk) == "done"
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 6
    ok_calls = [c for c in fake_llm.calls if c["status"] == 200]
    assert len(ok_calls) - calls_before == 2  # two more batches of 2, nothing repeated
    ordinals = sorted(Completion.objects.filter(job=job).values_list("ordinal", flat=True))
    assert ordinals == list(range(6))


def test_a_stale_lease_holder_cannot_write_after_another_worker_took_over(
    alice, agent, ready_document, fake_llm
) -> None:
    from training.services import store_completions

    document = ready_document(alice, pages=1)
    job = new_job(alice, document, agent, 2)
    job_prepare(job_id=job.pk)
    item = WorkItem.objects.get(job=job)
    WorkItem.objects.filter(pk=item.pk).update(status=WorkItem.Status.RUNNING, attempts=2)
    from collections import Counter

    written = store_completions(
        item=item, claim=1, pairs=[("q?", "a", "e")], model="m", redacted=False, reasons=Counter()
    )
    assert written == -1
    assert not Completion.objects.filter(job=job).exists()


def test_small_n_samples_chunks_across_the_document(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=12)
    job = new_job(alice, document, agent, 3)
    run_job(job)
    assert job.created_count == 3
    chunks = job.chunks_total
    assert chunks == 3
    indexes = sorted(WorkItem.objects.filter(job=job).values_list("chunk__index", flat=True))
    total_chunks = document.chunks.count()
    assert total_chunks > 3
    assert indexes[0] < total_chunks / 3 and indexes[-1] >= 2 * total_chunks / 3


def test_n_above_the_maximum_is_refused_with_a_clear_error(alice, agent, ready_document, settings) -> None:
    settings.MASSCER_MAX_COMPLETIONS_PER_JOB = 100
    document = ready_document(alice, pages=1)
    with pytest.raises(ValidationError, match="at most 100"):
        new_job(alice, document, agent, 101)
    assert not TrainingJob.objects.exists()


def test_it_refuses_charlies_agent_on_alices_job(alice, charlie, ready_document) -> None:
    from agents.models import Agent
    from workspaces.services import workspace_personal

    charlies = Agent.objects.create(
        owner=charlie, workspace=workspace_personal(user=charlie), name="C", slug="c", system_prompt="x"
    )
    document = ready_document(alice, pages=1)
    with pytest.raises(ValidationError):
        new_job(alice, document, charlies, 2)


def test_a_failed_document_fails_the_job_with_its_reason(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    document.status = "failed"
    document.error = "This PDF is password protected."
    document.save()
    job = new_job(alice, document, agent, 2)
    run_job(job)
    assert job.status == TrainingJob.Status.FAILED
    assert "password protected" in job.error
    assert fake_llm.calls == []


def test_job_status_transitions_are_enforced(alice, agent, ready_document) -> None:
    from training.services import job_transition

    document = ready_document(alice, pages=1)
    job = new_job(alice, document, agent, 2)
    with pytest.raises(ValueError):
        job_transition(job.pk, [TrainingJob.Status.QUEUED], TrainingJob.Status.COMPLETED)

