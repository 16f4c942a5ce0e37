"""Thin tasks: take ids, call a service."""
from __future__ import annotations

import random

from celery import shared_task
from celery.app.task import Task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import services


@shared_task(bind=True)
def ingest_document_task(self: Task, document_id: int) -> str:
    try:
        document = services.document_extract(document_id=document_id)
    except (OperationalError, InterfaceError) as exc:
        # The database away for a moment: a claim made lapses within one lease.
        countdown = settings.MASSCER_LEASE_SECONDS * random.uniform(1.0, 1.5)
        raise self.retry(countdown=countdown, exc=exc, max_retries=20) from exc
    return document.status
