"""Thin tasks: take ids, call a service; retries live here."""
from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from . import generation, services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def job_prepare_task(self: Task, job_id: int) -> None:
    try:
        services.job_prepare(job_id=job_id)
    except services.JobNotReady as exc:
        raise self.retry(countdown=2, exc=exc) from exc


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def generate_task(self: Task, item_id: int) -> str:
    try:
        return generation.work_item_run(item_id=item_id, attempt=self.request.retries)
    except generation.RetryLater as exc:
        # The service bounds the total wait (MASSCER_MODEL_UNREACHABLE_SECONDS).
        raise self.retry(countdown=exc.countdown, exc=exc) from exc


@shared_task(acks_late=True)
def sweep_task() -> dict[str, int]:
    return services.sweep()
