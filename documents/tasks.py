"""Thin tasks: take ids, call a service."""
from __future__ import annotations

from celery import shared_task

from . import services


@shared_task
def ingest_document_task(document_id: int) -> str:
    document = services.document_extract(document_id=document_id)
    return document.status
