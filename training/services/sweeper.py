"""The sweeper (Celery beat): re-queue work whose lease expired or whose message was lost,
and close jobs that are finished."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from conversations.services import conversation_imports_requeue_stale
from documents.services import document_requeue_stale

from ..models import BatchRound, TrainingJob, WorkItem
from ..tasks import batch_poll_task, generate_task, job_prepare_task
from .rounds import batch_round_open
from .state import job_finish_if_done

Status = TrainingJob.Status


def sweep() -> dict[str, int]:
    """Re-queue work whose lease expired or whose message was lost; close finished jobs."""
    now = timezone.now()
    requeue_after = timedelta(seconds=settings.MASSCER_REQUEUE_AFTER_SECONDS)
    expired = WorkItem.objects.filter(status=WorkItem.Status.RUNNING, lease_expires_at__lt=now)
    # Batch-mode items wait for their round (hours, at times); the batch sweep looks after them.
    lost = WorkItem.objects.filter(status=WorkItem.Status.PENDING, enqueued_at__lt=now - requeue_after).exclude(
        job__mode=TrainingJob.Mode.BATCH
    )
    item_ids = list(expired.values_list("pk", flat=True)[:1000]) + list(lost.values_list("pk", flat=True)[:1000])
    # Expired leases become claimable again via the lease test in the claim itself.
    WorkItem.objects.filter(pk__in=item_ids).update(enqueued_at=now)
    for item_id in item_ids:
        generate_task.delay(item_id)
    stale_jobs = list(
        TrainingJob.objects.filter(
            status__in=[Status.QUEUED, Status.CHUNKING], enqueued_at__lt=now - requeue_after
        ).values_list("pk", flat=True)[:200]
    )
    TrainingJob.objects.filter(pk__in=stale_jobs).update(enqueued_at=now)
    for job_id in stale_jobs:
        job_prepare_task.delay(job_id)
    finished = 0
    for job_id in TrainingJob.objects.filter(status=Status.GENERATING).values_list("pk", flat=True)[:200]:
        finished += int(job_finish_if_done(job_id=job_id))
    documents = document_requeue_stale(older_than=requeue_after)
    imports = conversation_imports_requeue_stale(older_than=requeue_after)
    rounds = batch_sweep(requeue_after=requeue_after)
    return {
        "work_items": len(item_ids),
        "jobs": len(stale_jobs),
        "finished": finished,
        "documents": documents,
        "conversation_imports": imports,
        "batch_rounds": rounds,
    }


def batch_sweep(*, requeue_after: timedelta) -> int:
    """Re-send poll tasks that were lost; open a round for batch jobs left without one."""
    now = timezone.now()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    overdue = BatchRound.objects.filter(free, status__in=BatchRound.OPEN, next_check_at__lt=now - requeue_after)
    job_ids = set(overdue.values_list("job_id", flat=True)[:200])
    for job_id in job_ids:
        batch_poll_task.delay(job_id)
    orphaned = (
        TrainingJob.objects.filter(
            mode=TrainingJob.Mode.BATCH,
            status=TrainingJob.Status.GENERATING,
            work_items__status=WorkItem.Status.PENDING,
            work_items__enqueued_at__lt=now - requeue_after,
        )
        .exclude(batch_rounds__status__in=BatchRound.OPEN)
        .values_list("pk", flat=True)
        .distinct()[:200]
    )
    for job_id in list(orphaned):
        batch_round_open(job_id=job_id)
    return len(job_ids) + len(orphaned)
