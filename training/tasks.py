"""Thin tasks: take ids, call a service; retries live here.

Late acknowledgement and rejection on a lost worker come from the settings
(CELERY_TASK_ACKS_LATE, CELERY_TASK_REJECT_ON_WORKER_LOST), so a fault test can turn
them off as a negative control.
"""
from __future__ import annotations

import random

import redis
from celery import shared_task
from celery.app.task import Task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import batch, generation, services


@shared_task(bind=True, max_retries=None)
def job_prepare_task(self: Task, job_id: int) -> None:
    try:
        services.job_prepare(job_id=job_id)
    except services.JobNotReady as exc:
        raise self.retry(countdown=2, exc=exc) from exc


# The database or the broker (the rate limiter's Redis) away for a moment.
INFRASTRUCTURE_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
INFRASTRUCTURE_RETRIES = 20


def _after_lease() -> float:
    # A claim this run held lapses within one lease (its heartbeat stopped with the run).
    return settings.MASSCER_LEASE_SECONDS * random.uniform(1.0, 1.5)


@shared_task(bind=True, max_retries=None)
def generate_task(self: Task, item_id: int) -> str:
    try:
        return generation.work_item_run(item_id=item_id, attempt=self.request.retries)
    except generation.RetryLater as exc:
        # The service bounds the total wait (MASSCER_MODEL_UNREACHABLE_SECONDS).
        raise self.retry(countdown=exc.countdown, exc=exc) from exc
    except INFRASTRUCTURE_ERRORS as exc:
        # The sweeper would find the item too, once its lease lapsed; retrying says so sooner.
        raise self.retry(countdown=_after_lease(), exc=exc, max_retries=INFRASTRUCTURE_RETRIES) from exc


@shared_task
def sweep_task() -> dict[str, int]:
    return services.sweep()


@shared_task
def batch_poll_task(job_id: int) -> str:
    """One step of a batch-mode job; it schedules the next one itself (the sweeper revives a lost chain).

    Routed to the llm queue (CELERY_TASK_ROUTES: training.tasks.*).
    """
    return batch.batch_tick(job_id=job_id)
