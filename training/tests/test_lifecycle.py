"""Review permissions, cancel and retry."""
from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from testing.members import add_member
from training.models import Completion, TrainingJob, WorkItem
from training.services import completion_review, completions_review_bulk, job_cancel, job_retry

from .test_generation import new_job, run_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def made(alice, agent, ready_document, fake_llm) -> TrainingJob:
    job = new_job(alice, ready_document(alice, pages=1), agent, 3)
    run_job(job)
    return job


def test_only_reviewers_and_admins_approve(made, bob, charlie) -> None:
    completion = Completion.objects.filter(job=made).first()
    add_member(actor=made.owner, workspace=made.workspace, user=bob, role="member")
    with pytest.raises(PermissionDenied):
        completion_review(completion=completion, status="approved", reviewer=bob)
    with pytest.raises(PermissionDenied):
        completion_review(completion=completion, status="approved", reviewer=charlie)
    add_member(actor=made.owner, workspace=made.workspace, user=bob, role="reviewer")
    assert completion_review(completion=completion, status="approved", reviewer=bob).status == "approved"


def test_bulk_review_touches_only_workspaces_where_the_user_reviews(made, alice, charlie) -> None:
    everything = Completion.objects.all()
    assert completions_review_bulk(completions=everything, status="rejected", reviewer=charlie) == 0
    assert completions_review_bulk(completions=everything, status="rejected", reviewer=alice) == 3


def test_cancel_stops_a_job_between_model_calls(alice, agent, ready_document, fake_llm) -> None:
    job = new_job(alice, ready_document(alice, pages=3), agent, 9)
    from training.services import job_prepare

    job_prepare(job_id=job.pk)
    assert job_cancel(actor=alice, job=job)
    run_job(job)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.CANCELLED
    assert fake_llm.calls == []
    assert not WorkItem.objects.filter(job=job, status__in=["pending", "running"]).exists()


def test_retry_tops_up_a_shortfall_with_a_fresh_budget(alice, agent, ready_document, fake_llm) -> None:
    fake_llm.set_default([{"kind": "never"}])
    job = new_job(alice, ready_document(alice, pages=1), agent, 4)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.shortfall == 4
    fake_llm.set_default(None)
    assert job_retry(actor=alice, job=job)
    for item_id in WorkItem.objects.filter(job=job).values_list("pk", flat=True):
        from training.generation import work_item_run

        work_item_run(item_id=item_id)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.created_count == 4 and job.shortfall == 0 and job.error == ""


def test_retry_of_a_job_whose_source_failed_starts_over(alice, agent, ready_document, fake_llm) -> None:
    document = ready_document(alice, pages=1)
    document.status, document.error = "failed", "broken"
    document.save()
    job = new_job(alice, document, agent, 2)
    run_job(job)
    assert job.status == TrainingJob.Status.FAILED
    assert job_retry(actor=alice, job=job)
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.QUEUED


def test_a_user_cannot_run_more_jobs_at_once_than_the_limit(alice, agent, ready_document, settings) -> None:
    from django.core.exceptions import ValidationError

    settings.MASSCER_MAX_ACTIVE_JOBS_PER_USER = 2
    document = ready_document(alice, pages=1)
    new_job(alice, document, agent, 2)
    new_job(alice, document, agent, 2)
    with pytest.raises(ValidationError, match="limit is 2"):
        new_job(alice, document, agent, 2)
