"""Batch mode's rounds from the services' side: opening a job's next round and scheduling
the poll task that moves it on (`training.batch.batch_tick`)."""
from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ..models import BatchRound
from ..tasks import batch_poll_task


def batch_round_open(*, job_id: int, countdown: float = 0.0, failures: int = 0) -> BatchRound:
    """Plan the job's next round unless one is open; the poll task submits it after `countdown` s."""
    with transaction.atomic():
        current = _open_round(job_id)
        if current is None:
            number = (BatchRound.objects.filter(job_id=job_id).aggregate(n=Max("number"))["n"] or 0) + 1
            due = timezone.now() + timedelta(seconds=countdown)
            try:
                with transaction.atomic():
                    current = BatchRound.objects.create(
                        job_id=job_id, number=number, failures=failures, next_check_at=due
                    )
            except IntegrityError:  # another worker opened it just now
                current = BatchRound.objects.get(job_id=job_id, number=number)
        batch_poll_schedule(job_id=job_id, countdown=countdown)
    return current


def _open_round(job_id: int) -> BatchRound | None:
    return BatchRound.objects.filter(job_id=job_id, status__in=BatchRound.OPEN).order_by("-number").first()


def batch_poll_schedule(*, job_id: int, countdown: float) -> None:
    """Have the poll task look at the job's round after `countdown` seconds (sent after commit)."""
    batch_poll_task.apply_async_on_commit((job_id,), countdown=max(0.0, countdown))
