"""An item the last wave leaves short takes the unused spare pairs other items kept, instead of
a second call after everything else (`training.services.spares`)."""
from __future__ import annotations

from typing import Any

import pytest

from training.models import Completion, TrainingJob, WorkItem
from training.services import spares
from training.validation import normalise

from .test_generation import new_job, run_job

pytestmark = pytest.mark.django_db


def _short_last_item(alice: Any, agent: Any, ready_document: Any, fake_llm: Any, settings: Any) -> TrainingJob:
    """A one-wave job (every call asks for a spare) whose last item's reply has two invented
    quotations: one more than its spare covers."""
    settings.MASSCER_LLM_MAX_CONCURRENCY = 64
    job = new_job(alice, ready_document(alice, pages=8), agent, 13)
    from training.services import job_prepare

    job_prepare(job_id=job.pk)
    last = WorkItem.objects.filter(job=job).order_by("pk").last()
    assert last is not None and WorkItem.objects.filter(job=job).count() >= 3
    own = last.chunk.text[len(last.chunk.text) // 2 :][:60]
    fake_llm.set_default([{"kind": "bad_evidence", "n": 2, "match": own}])
    run_job(job)
    return job


def test_a_short_last_item_takes_another_items_spare_instead_of_calling_again(
    alice, agent, ready_document, fake_llm, settings
) -> None:
    job = _short_last_item(alice, agent, ready_document, fake_llm, settings)
    items = list(WorkItem.objects.filter(job=job).order_by("pk"))
    short = items[-1]
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == Completion.objects.filter(job=job).count() == 13 and job.shortfall == 0
    # One call per item, the short one's included: its missing pair came from a bank.
    assert len(fake_llm.calls) == len(items) == job.calls and all(item.calls == 1 for item in items)
    assert short.reasons["evidence_not_found"] == 2 and short.reasons["quota_moved"] == 1
    assert short.made == short.quota
    lenders = [item for item in items[:-1] if item.made > 0 and "spare_unused" not in item.reasons]
    assert len(lenders) == 1 and lenders[0].made == lenders[0].quota
    assert all(item.status == WorkItem.Status.DONE for item in items)
    # The lent pair is the lender's: on its chunk, grounded in its text, not a repeat.
    questions = [normalise(c.question) for c in Completion.objects.filter(job=job)]
    assert len(set(questions)) == 13
    for completion in Completion.objects.filter(job=job, chunk__in=[lenders[0].chunk]):
        assert " ".join(completion.evidence.split()) in " ".join(completion.chunk.text.split())
    # Its bank is spent; the others keep theirs until the job is gone.
    assert spares.BANK_KEY not in (WorkItem.objects.get(pk=lenders[0].pk).batch_state or {})
    assert all(spares.BANK_KEY in (item.batch_state or {}) for item in items[:-1] if item.pk != lenders[0].pk)


def test_without_banks_the_short_item_calls_again(
    alice, agent, ready_document, fake_llm, settings, monkeypatch
) -> None:
    """The control: no item keeps its spares, so the short one pays a second call."""
    monkeypatch.setattr(spares, "MAX_BANKED", 0)
    job = _short_last_item(alice, agent, ready_document, fake_llm, settings)
    items = list(WorkItem.objects.filter(job=job).order_by("pk"))
    assert job.created_count == 13 and job.shortfall == 0
    # (Its later replies lose two pairs too: the model is asked again, not the banks.)
    assert len(fake_llm.calls) > len(items) and items[-1].calls >= 2


def test_a_judged_job_keeps_no_bank(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_MAX_CONCURRENCY = 64
    job = new_job(alice, ready_document(alice, pages=8), agent, 13, judge=True, judge_threshold=1)
    run_job(job)
    assert job.created_count == 13
    states = WorkItem.objects.filter(job=job).values_list("batch_state", flat=True)
    assert not any(spares.BANK_KEY in (state or {}) for state in states)
