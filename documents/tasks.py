"""Thin tasks: take ids, call a service."""
from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(acks_late=True, reject_on_worker_lost=True)
def ingest_document_task(document_id: int) -> str:
    document = services.document_extract(document_id=document_id)
    return document.status
