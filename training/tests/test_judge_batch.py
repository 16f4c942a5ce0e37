"""The judge pass in batch mode, pairs that wait for the judge, and the judge's metrics.

A generation reply is paid for: when its judge call cannot be made now (no call slot, a
transient error, or batch mode's next round), its validated pairs wait in the work item
and are judged later; none is lost and the job still makes exactly N above the threshold.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from masscer.lib.concurrency import CallSlots, NoSlot
from masscer.tests.test_metrics import by_outcome, delta, scrape, value
from training.models import BatchRound, Completion, TrainingJob, WorkItem

from .test_batch import run_batch_job
from .test_generation import run_job
from .test_judge import MARKER, judge_calls, new_job, planted_document
from .test_limits_and_cost import limited  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db


def generation_calls(fake_llm: Any) -> list[dict[str, Any]]:
    return [call for call in fake_llm.calls if "<pairs_to_judge>" not in call["prompt"]]


def batch_job(owner: Any, document: Any, agent: Any, count: int, **params: Any) -> TrainingJob:
    return new_job(owner, document, agent, count, mode=TrainingJob.Mode.BATCH, **params)


def assert_exactly_n_judged(job: TrainingJob, count: int) -> list[Completion]:
    assert job.status == TrainingJob.Status.COMPLETED, job.error
    assert job.created_count == count and job.shortfall == 0
    completions = list(Completion.objects.filter(job=job))
    assert len(completions) == count
    assert all(c.judge is not None and c.judge["faithfulness"] >= job.judge_threshold for c in completions)
    return completions


# --- batch mode -----------------------------------------------------------------------------------


def test_a_batch_job_judges_in_the_next_round_and_replaces_a_planted_pair(
    alice, agent, ready_document, fake_llm
) -> None:
    fake_llm.set_default([{"kind": "good"}, {"kind": "judge", "low": MARKER}])
    job = batch_job(alice, planted_document(ready_document, alice), agent, 6, judge=True)
    run_batch_job(job)
    completions = assert_exactly_n_judged(job, 6)
    assert not any(MARKER in f"{c.question} {c.answer} {c.evidence}" for c in completions)
    item = WorkItem.objects.get(job=job)
    assert item.reasons.get("judge_low", 0) >= 1 and item.batch_state["held"] == []
    # Round 1 generates six; round 2 judges them (the planted one is low); round 3 tops up, round
    # 4 judges the top-up. Every request went through the batches API.
    assert [r.status for r in BatchRound.objects.filter(job=job)] == [BatchRound.Status.INGESTED] * 4
    assert {call["endpoint"] for call in fake_llm.calls} == {"batch"}
    judged = judge_calls(fake_llm)
    assert len(judged) == 2 and len(generation_calls(fake_llm)) == 2
    assert job.calls == len(fake_llm.calls) == 4


def test_a_batch_judge_line_that_fails_keeps_the_pairs_for_the_next_round(
    alice, agent, ready_document, fake_llm
) -> None:
    fake_llm.script([{"kind": "http_error", "status": 500, "judge": True, "endpoint": "batch"}])
    job = batch_job(alice, ready_document(alice, pages=1), agent, 4, judge=True)
    run_batch_job(job, ticks=40)
    assert_exactly_n_judged(job, 4)
    # One generation request made all four pairs; the failed judge line was asked again, not the model.
    assert len(generation_calls(fake_llm)) == 1 and len(judge_calls(fake_llm)) == 2
    assert job.calls == 2  # the failed line is not a call that answered
    assert "1 request(s) to retry" in BatchRound.objects.filter(job=job).order_by("number")[1].error


def test_a_batch_job_that_reaches_its_budget_stores_no_unjudged_pairs(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:2000"
    job = batch_job(alice, ready_document(alice, pages=1), agent, 4, judge=True, budget=Decimal("0.000001"))
    run_batch_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 0 and "cost budget" in job.error
    assert judge_calls(fake_llm) == [] and job.calls == 1
    assert WorkItem.objects.get(job=job).reasons.get("judge_unchecked") == 4


def test_without_the_judge_a_batch_job_sends_no_judge_requests(alice, agent, ready_document, fake_llm) -> None:
    job = batch_job(alice, ready_document(alice, pages=1), agent, 3, judge=False)
    run_batch_job(job)
    assert job.created_count == 3 and judge_calls(fake_llm) == []
    assert list(Completion.objects.filter(job=job).values_list("judge", flat=True)) == [None] * 3


# --- live: a judge call that cannot be made now ---------------------------------------------------


def test_a_judge_call_that_fails_once_keeps_the_paid_pairs(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "http_error", "status": 503, "judge": True}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    retries = run_job(job)
    assert len(retries) == 1 and "judge" in str(retries[0])
    assert_exactly_n_judged(job, 3)
    # The pairs of the one generation call waited for the judge; the model was not asked again.
    assert len(generation_calls(fake_llm)) == 1 and len(judge_calls(fake_llm)) == 2
    assert job.calls == 2
    item = WorkItem.objects.get(job=job)
    assert item.batch_state["held"] == [] and item.unavailable_since is None


def test_a_judge_call_without_a_call_slot_keeps_the_paid_pairs(
    alice, agent, ready_document, fake_llm, limited, monkeypatch  # noqa: F811
) -> None:
    limited.MASSCER_LLM_MAX_CONCURRENCY = 1
    take = CallSlots.take
    takes: list[int] = []

    def second_take_times_out(self: CallSlots, max_wait: float) -> str:
        takes.append(len(fake_llm.calls))
        if len(takes) == 2:  # the judge call's slot, right after the generation call
            raise NoSlot(max_wait)
        return take(self, max_wait)

    monkeypatch.setattr(CallSlots, "take", second_take_times_out)
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    retries = run_job(job)
    assert len(retries) == 1 and "call slots" in str(retries[0])
    assert_exactly_n_judged(job, 3)
    assert len(generation_calls(fake_llm)) == 1 and len(judge_calls(fake_llm)) == 1
    assert takes == [0, 1, 1]  # generation, the judge's slot that timed out, the judge again


def test_waiting_pairs_are_judged_before_anything_else_is_asked(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "http_error", "status": 503, "judge": True}])
    fake_llm.set_default([{"kind": "good"}, {"kind": "judge", "low": MARKER}])
    job = new_job(alice, planted_document(ready_document, alice), agent, 6, judge=True)
    run_job(job)
    assert_exactly_n_judged(job, 6)
    kinds = ["generate" if call in generation_calls(fake_llm) else "judge" for call in fake_llm.calls]
    # Generate, judge (fails), judge again (rejects the planted pair), top up, judge the top-up.
    assert kinds == ["generate", "judge", "judge", "generate", "judge"]


def test_a_judge_unreachable_for_too_long_stores_the_pairs_unjudged(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    settings.MASSCER_MODEL_UNREACHABLE_SECONDS = 0
    fake_llm.script([{"kind": "http_error", "status": 503, "judge": True}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_job(job)
    assert job.created_count == 3
    assert list(Completion.objects.filter(job=job).values_list("judge", flat=True)) == [None] * 3


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_count_judge_calls_apart_from_generation(client, alice, agent, ready_document, fake_llm) -> None:
    fake_llm.script([{"kind": "http_error", "status": 503, "judge": True}])
    before = scrape(client)
    job = new_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_job(job)
    after = scrape(client)
    judged = delta(by_outcome(before, "masscer_judge_calls_total"), by_outcome(after, "masscer_judge_calls_total"))
    assert judged == {"transient_error": 1, "ok": 1}
    generated = delta(by_outcome(before), by_outcome(after))
    assert generated == {"ok": 1}
    timed = delta(
        by_outcome(before, "masscer_judge_call_seconds_count"), by_outcome(after, "masscer_judge_call_seconds_count")
    )
    assert timed == judged

    def tokens(family: str, kind: str) -> float:
        name = f"masscer_{family}_tokens_total"
        return value(after, name, kind=kind, mode="live") - value(before, name, kind=kind, mode="live")

    # The job's counters hold both calls; each family holds its own.
    assert tokens("judge", "prompt") > 0 and tokens("model", "prompt") > 0
    assert tokens("judge", "prompt") + tokens("model", "prompt") == job.prompt_tokens
    assert tokens("judge", "completion") + tokens("model", "completion") == job.completion_tokens


def test_metrics_count_a_batch_jobs_judge_lines(client, alice, agent, ready_document, fake_llm) -> None:
    before = scrape(client)
    job = batch_job(alice, ready_document(alice, pages=1), agent, 3, judge=True)
    run_batch_job(job)
    after = scrape(client)
    judged = delta(
        by_outcome(before, "masscer_judge_calls_total", mode="batch"),
        by_outcome(after, "masscer_judge_calls_total", mode="batch"),
    )
    assert judged == {"ok": 1}
    assert delta(by_outcome(before, mode="batch"), by_outcome(after, mode="batch")) == {"ok": 1}
