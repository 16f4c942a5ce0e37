"""Batch mode against the fake server's files and batches endpoints, driven inline."""
from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from training.batch import batch_tick
from training.models import BatchRound, Completion, TrainingJob, WorkItem
from training.services import job_cancel, job_create, job_prepare, sweep
from training.validation import evidence_in_source, normalise

pytestmark = pytest.mark.django_db


def tick(job: TrainingJob) -> str:
    """What the poll task does once its countdown has passed."""
    BatchRound.objects.filter(job=job).update(next_check_at=timezone.now())
    return batch_tick(job_id=job.pk)


def run_batch_job(job: TrainingJob, ticks: int = 20) -> list[str]:
    """Do what the workers do, inline: prepare, then tick until the job is finished."""
    job_prepare(job_id=job.pk)
    outcomes: list[str] = []
    for _ in range(ticks):
        job.refresh_from_db()
        if job.is_finished:
            break
        outcomes.append(tick(job))
    job.refresh_from_db()
    return outcomes


def new_batch_job(owner: Any, document: Any, agent: Any, count: int, **params: Any) -> TrainingJob:
    return job_create(owner=owner, count=count, agents=[agent], documents=[document], mode="batch", **params)


def batch_calls(fake_llm: Any) -> list[dict[str, Any]]:
    return [call for call in fake_llm.calls if call["endpoint"] == "batch"]


def test_a_batch_job_makes_exactly_n_grounded_completions_in_one_round(
    alice, agent, ready_document, fake_llm
) -> None:
    document = ready_document(alice, pages=3)
    job = new_batch_job(alice, document, agent, 13)
    outcomes = run_batch_job(job)
    assert outcomes == ["submitted", "ingested"]
    assert job.status == TrainingJob.Status.COMPLETED and job.mode == TrainingJob.Mode.BATCH
    assert job.created_count == 13 and job.shortfall == 0
    completions = list(Completion.objects.filter(job=job).select_related("chunk"))
    assert len(completions) == 13
    assert all(evidence_in_source(c.evidence, c.chunk.text) for c in completions)
    assert all(list(c.agents.all()) == [agent] for c in completions)
    assert len({normalise(c.question) for c in completions}) == 13
    # One batch with one request per work item, and no live calls.
    assert len(fake_llm.batches()) == 1
    assert len(batch_calls(fake_llm)) == WorkItem.objects.filter(job=job).count() == len(fake_llm.calls)
    assert job.calls == len(fake_llm.calls)


def test_short_and_unparseable_lines_are_topped_up_in_a_second_round(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=3)
    job = new_batch_job(alice, document, agent, 12)
    job_prepare(job_id=job.pk)
    items = list(WorkItem.objects.filter(job=job).order_by("chunk__index"))
    assert len(items) >= 2
    # Lines are answered in order: the first item's reply is short, the second's unparseable.
    fake_llm.script([{"kind": "short", "n": 1, "endpoint": "batch"}, {"kind": "invalid_json", "endpoint": "batch"}])
    run_batch_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 12 and Completion.objects.filter(job=job).count() == 12
    rounds = list(BatchRound.objects.filter(job=job))
    assert [r.status for r in rounds] == [BatchRound.Status.INGESTED] * 2
    first, second = (batch_calls(fake_llm)[: len(items)], batch_calls(fake_llm)[len(items) :])
    assert [c["behaviour"] for c in first[:2]] == ["short", "invalid_json"]
    assert len(second) == 2  # only the two items still short
    # The second round asks each item only for what it still needs, with the same
    # feedback a live call would get after an unparseable reply.
    asked_first = {c["custom_id"].rsplit("item", 1)[1]: c["requested_count"] for c in first}
    asked_second = {c["custom_id"].rsplit("item", 1)[1]: c["requested_count"] for c in second}
    short_item, broken_item = (str(item.pk) for item in items[:2])
    assert asked_second[short_item] == asked_first[short_item] - 1
    assert asked_second[broken_item] == asked_first[broken_item]
    broken_call = next(c for c in second if c["custom_id"].endswith(f"item{broken_item}"))
    assert "could not be parsed" in broken_call["prompt"]
    assert WorkItem.objects.get(pk=items[1].pk).reasons["invalid_output"] == 1
    assert job.calls == len(items) + 2


def test_validation_rejects_invented_evidence_and_asks_again(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "bad_evidence", "n": 2, "endpoint": "batch"}])
    job = new_batch_job(alice, document, agent, 4)
    run_batch_job(job)
    assert job.created_count == 4
    item = WorkItem.objects.get(job=job)
    assert item.reasons["evidence_not_found"] == 2
    calls = batch_calls(fake_llm)
    assert [c["requested_count"] for c in calls] == [4, 2]
    assert "not copied verbatim" in calls[1]["prompt"]
    for completion in Completion.objects.filter(job=job).select_related("chunk"):
        assert "invented by the model" not in completion.evidence
        assert evidence_in_source(completion.evidence, completion.chunk.text)


def test_counters_and_cost_match_the_batch_at_the_batch_price(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=2:8"
    settings.MASSCER_BATCH_PRICE_FACTOR = 0.5
    document = ready_document(alice, pages=3)
    fake_llm.script([{"kind": "short", "n": 1, "endpoint": "batch"}])
    job = new_batch_job(alice, document, agent, 9)
    run_batch_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 9
    items = WorkItem.objects.filter(job=job).count()
    usage = [
        json.loads(line)["response"]["body"]["usage"]
        for batch in fake_llm.batches()
        for line in fake_llm.file_content(batch["output_file_id"]).decode().splitlines()
    ]
    prompt_tokens = sum(u["prompt_tokens"] for u in usage)
    completion_tokens = sum(u["completion_tokens"] for u in usage)
    assert job.calls == len(usage) == len(batch_calls(fake_llm)) == items + 1  # one top-up
    assert (job.prompt_tokens, job.completion_tokens) == (prompt_tokens, completion_tokens)
    full_price = (Decimal(2) * prompt_tokens + Decimal(8) * completion_tokens) / Decimal(1_000_000)
    assert job.cost == pytest.approx(full_price / 2, abs=Decimal("0.000002"))
    assert sum(WorkItem.objects.filter(job=job).values_list("calls", flat=True)) == items + 1


@pytest.mark.parametrize("fault", [{"kind": "batch_failed", "message": "Enqueued token limit reached"},
                                   {"kind": "batch_expired"}])
def test_a_failed_or_expired_batch_is_retried(alice, agent, ready_document, fake_llm, fault) -> None:
    document = ready_document(alice, pages=3)
    fake_llm.script([fault])
    job = new_batch_job(alice, document, agent, 6)
    outcomes = run_batch_job(job)
    assert outcomes == ["submitted", "ingested", "submitted", "ingested"]
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 6
    items = WorkItem.objects.filter(job=job).count()
    first, second = BatchRound.objects.filter(job=job)
    assert first.provider_status == ("failed" if fault["kind"] == "batch_failed" else "expired")
    assert f"{items} request(s) to retry" in first.error
    # The retry waits a backoff, and the failure is counted for the next one.
    assert second.failures == 1
    assert job.calls == items  # unanswered requests are neither billed nor counted


def test_the_retry_of_a_failed_batch_waits_its_backoff(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "batch_failed"}])
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    assert tick(job) == "ingested"
    retry = BatchRound.objects.get(job=job, number=2)
    assert retry.next_check_at > timezone.now()
    assert batch_tick(job_id=job.pk) == "not-due"


def test_a_model_unreachable_for_too_long_fails_the_items_clearly(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_MODEL_UNREACHABLE_SECONDS = 60
    document = ready_document(alice, pages=1)
    fake_llm.set_default({"kind": "batch_failed", "message": "The batch service is down"})
    job = new_batch_job(alice, document, agent, 3)
    run_batch_job(job, ticks=2)
    assert job.status == TrainingJob.Status.GENERATING
    WorkItem.objects.filter(job=job).update(unavailable_since=timezone.now() - timedelta(seconds=61))
    run_batch_job(job)
    assert job.status == TrainingJob.Status.FAILED
    assert "Model unreachable for 1 minutes" in job.error and "The batch service is down" in job.error


def test_an_upload_that_fails_for_now_is_submitted_again(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "http_error", "status": 503, "endpoint": "files"}])
    job = new_batch_job(alice, document, agent, 3)
    outcomes = run_batch_job(job)
    assert outcomes == ["retry-later", "submitted", "ingested"]
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 3
    assert BatchRound.objects.get(job=job).failures == 1


def test_a_permanent_error_in_the_lines_fails_the_job_with_the_reason(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.set_default({"kind": "http_error", "status": 401, "message": "Incorrect API key {api_key}"})
    job = new_batch_job(alice, document, agent, 3)
    outcomes = run_batch_job(job)
    assert outcomes == ["submitted", "ingested"]
    assert job.status == TrainingJob.Status.FAILED
    assert "rejected the API key (401)" in job.error
    assert "sk-test-secret-key" not in job.error
    assert len(batch_calls(fake_llm)) == 1


def test_a_server_without_the_batches_api_fails_the_job_at_once(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "http_error", "status": 404, "endpoint": "files"}])
    job = new_batch_job(alice, document, agent, 3)
    outcomes = run_batch_job(job)
    assert outcomes == ["failed-permanent"]
    assert job.status == TrainingJob.Status.FAILED
    assert "files and batches API" in job.error
    assert BatchRound.objects.get(job=job).status == BatchRound.Status.FAILED


def test_polling_twice_takes_the_results_in_once(alice, agent, ready_document, fake_llm, monkeypatch) -> None:
    from training import batch

    document = ready_document(alice, pages=3)
    job = new_batch_job(alice, document, agent, 9)
    job_prepare(job_id=job.pk)
    items = WorkItem.objects.filter(job=job).count()
    assert items >= 2
    assert tick(job) == "submitted"
    # The worker taking the results in dies after the first item.
    real_take_in, taken = batch._take_in, []

    def die_after_one(*args: Any) -> bool:
        if taken:
            raise RuntimeError("worker lost")
        taken.append(args)
        return real_take_in(*args)

    monkeypatch.setattr(batch, "_take_in", die_after_one)
    with pytest.raises(RuntimeError):
        tick(job)
    monkeypatch.undo()
    round_ = BatchRound.objects.get(job=job)
    assert round_.status == BatchRound.Status.INGESTING
    assert tick(job) == "not-due"  # its lease still holds
    made_before = Completion.objects.filter(job=job).count()
    assert 0 < made_before < 9
    # The lease runs out; the next poll takes in the rest, and nothing twice.
    BatchRound.objects.filter(pk=round_.pk).update(lease_expires_at=timezone.now())
    assert tick(job) == "ingested"
    # A stale duplicate that polled before the round moved on finds it is not its to take.
    round_.status = BatchRound.Status.SUBMITTED
    assert batch._poll(TrainingJob.objects.get(pk=job.pk), round_) == "not-ours"
    assert batch_tick(job_id=job.pk) == "idle"
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED
    assert Completion.objects.filter(job=job).count() == job.created_count == 9
    assert job.calls == len(batch_calls(fake_llm)) == items


def test_a_tick_that_is_not_due_or_is_taken_does_nothing(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    assert batch_tick(job_id=job.pk) == "not-due"  # the countdown has not passed
    BatchRound.objects.filter(job=job).update(
        next_check_at=timezone.now(), lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert batch_tick(job_id=job.pk) == "not-due"  # another worker holds the round
    assert batch_calls(fake_llm) == []


def test_the_batch_stays_in_progress_until_the_provider_is_done(
    alice, agent, ready_document, fake_llm
) -> None:
    fake_llm.configure(batch_delay=60)
    document = ready_document(alice, pages=1)
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    assert tick(job) == "waiting"
    round_ = BatchRound.objects.get(job=job)
    assert round_.provider_status == "in_progress" and round_.status == BatchRound.Status.SUBMITTED
    assert Completion.objects.filter(job=job).count() == 0 and batch_calls(fake_llm) == []


def test_the_sweeper_revives_a_lost_poll(alice, agent, ready_document, fake_llm, settings, monkeypatch) -> None:
    from training import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.batch_poll_task, "delay", lambda job_id: sent.append(job_id))
    document = ready_document(alice, pages=1)
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    assert sweep()["batch_rounds"] == 0 and sent == []
    # The chain's next message was lost: the round is overdue and nobody holds it.
    late = timezone.now() - timedelta(seconds=settings.MASSCER_REQUEUE_AFTER_SECONDS + 1)
    BatchRound.objects.filter(job=job).update(next_check_at=late)
    assert sweep()["batch_rounds"] == 1 and sent == [job.pk]
    assert batch_tick(job_id=job.pk) == "ingested"
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED


def test_the_sweeper_does_not_run_waiting_batch_items_live(alice, agent, ready_document, fake_llm, settings) -> None:
    document = ready_document(alice, pages=1)
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    late = timezone.now() - timedelta(seconds=settings.MASSCER_REQUEUE_AFTER_SECONDS + 1)
    WorkItem.objects.filter(job=job).update(enqueued_at=late)
    assert sweep()["work_items"] == 0


def test_the_cost_budget_stops_a_batch_job_between_rounds(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:1000"
    document = ready_document(alice, pages=1)
    fake_llm.script([{"kind": "short", "n": 1, "endpoint": "batch"}])
    job = new_batch_job(alice, document, agent, 5, budget=Decimal("0.01"))
    run_batch_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 1 and job.shortfall == 4
    assert job.shortfall_reasons.get("budget_exhausted") == 1
    assert len(batch_calls(fake_llm)) == 1


def test_cancelling_a_batch_job_cancels_the_batch(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.configure(batch_delay=60)
    document = ready_document(alice, pages=1)
    job = new_batch_job(alice, document, agent, 3)
    job_prepare(job_id=job.pk)
    assert tick(job) == "submitted"
    assert job_cancel(actor=alice, job=job)
    assert tick(job) == "job-not-running"
    assert BatchRound.objects.get(job=job).status == BatchRound.Status.CANCELLED
    assert [b["status"] for b in fake_llm.batches()] == ["cancelled"]
    assert Completion.objects.filter(job=job).count() == 0


def test_batch_mode_needs_a_chat_endpoint(alice, agent, ready_document, settings) -> None:
    settings.MASSCER_LLM_MODE = "completion"
    document = ready_document(alice, pages=1)
    with pytest.raises(ValidationError, match="chat model endpoint"):
        new_batch_job(alice, document, agent, 3)
    with pytest.raises(ValidationError, match="Unknown mode"):
        job_create(owner=alice, count=3, agents=[agent], documents=[document], mode="turbo")


def test_live_jobs_are_unchanged_by_batch_mode(alice, agent, ready_document, fake_llm) -> None:
    from training.tests.test_generation import run_job

    document = ready_document(alice, pages=1)
    job = job_create(owner=alice, count=3, agents=[agent], documents=[document])
    run_job(job)
    assert job.mode == TrainingJob.Mode.LIVE and job.created_count == 3
    assert not BatchRound.objects.exists() and fake_llm.batches() == []


def test_train_batch_flag_creates_a_batch_job(alice, fake_llm, tmp_path, settings) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("The warranty covers the battery for two years. Refunds take five days.")
    call_command("train", str(path), count=2, agent=["support"], user="alice", batch=True, no_wait=True, json=True)
    job = TrainingJob.objects.get()
    assert job.mode == TrainingJob.Mode.BATCH
