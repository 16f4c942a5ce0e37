"""Thin tasks: take ids, call a service; retries live here.

Celery is at the edge: the services import these tasks at module level (to enqueue them
after commit), so each task imports what it calls inside its body; this is the one module
of the app with function-level imports, and it breaks what would be an import cycle.

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


@shared_task(bind=True, max_retries=None)
def job_prepare_task(self: Task, job_id: int) -> None:
    from .services import JobNotReady, job_prepare

    try:
        job_prepare(job_id=job_id)
    except JobNotReady as exc:
        raise self.retry(countdown=exc.countdown, exc=exc) from exc


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
    from .generation import RetryLater, work_item_run

    try:
        return work_item_run(item_id=item_id, attempt=self.request.retries)
    except RetryLater as exc:
        # The service bounds the total wait (MASSCER_MODEL_UNREACHABLE_SECONDS).
        raise self.retry(countdown=exc.countdown, exc=exc) from exc
    except INFRASTRUCTURE_ERRORS as exc:
        # The sweeper would find the item too, once its lease lapsed; retrying says so sooner.
        raise self.retry(countdown=_after_lease(), exc=exc, max_retries=INFRASTRUCTURE_RETRIES) from exc


@shared_task
def sweep_task() -> dict[str, int]:
    from .services import sweep

    return sweep()


@shared_task
def batch_poll_task(job_id: int) -> str:
    """One step of a batch-mode job; it schedules the next one itself (the sweeper revives a lost chain).

    Routed to the llm queue (CELERY_TASK_ROUTES: training.tasks.*).
    """
    from .batch import batch_tick

    return batch_tick(job_id=job_id)
