"""Thin tasks: take ids, call a service."""
from __future__ import annotations

import random

from celery import shared_task
from celery.app.task import Task
from django.conf import settings
from django.db import InterfaceError, OperationalError


@shared_task(bind=True)
def import_conversations_task(self: Task, import_id: int) -> str:
    from . import services

    try:
        return services.conversation_import_run(import_id=import_id).status
    except (OperationalError, InterfaceError) as exc:
        # The database away for a moment: the claim lapses within one lease and is taken again.
        countdown = settings.MASSCER_LEASE_SECONDS * random.uniform(1.0, 1.5)
        raise self.retry(countdown=countdown, exc=exc, max_retries=20) from exc
    except Exception as exc:
        # Never left "running" for ever: the page says it failed, and why.
        services.conversation_import_fail(import_id=import_id, error=f"The import stopped: {exc}")
        raise
