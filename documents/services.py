"""Every write to documents goes through here."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from masscer.leases import heartbeat
from masscer.lib.extract import Extracted, ExtractionError, PageSink, extract_isolated
from masscer.lib.tokens import count_tokens
from workspaces.models import Workspace
from workspaces.permissions import require_change
from workspaces.services import workspace_for_write

from .models import Document, Page

logger = logging.getLogger(__name__)


def _human_bytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _sha256_of(fileobj: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fileobj.seek(0)
    for block in iter(lambda: fileobj.read(1024 * 1024), b""):
        digest.update(block)
        size += len(block)
    fileobj.seek(0)
    return digest.hexdigest(), size


def document_validate_upload(*, filename: str, size: int) -> None:
    """Reject what we can tell from the outside before anything is written."""
    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    if size > limit:
        raise ValidationError(
            f"'{filename}' is {_human_bytes(size)}; the limit is {_human_bytes(limit)}.", code="too_large"
        )
    if size == 0:
        raise ValidationError(f"'{filename}' is empty.", code="empty")


@transaction.atomic
def document_create(
    *,
    owner: AbstractBaseUser,
    fileobj: IO[bytes],
    filename: str,
    workspace: Workspace | None = None,
    title: str = "",
    enqueue: bool = True,
) -> Document:
    """Store an upload and queue its extraction (after commit)."""
    workspace = workspace_for_write(user=owner, workspace=workspace)
    sha256, size = _sha256_of(fileobj)
    document_validate_upload(filename=filename, size=size)
    document = Document(
        owner=owner,
        workspace=workspace,
        title=(title or Path(filename).stem or filename)[:300],
        filename=Path(filename).name[:300],
        size=size,
        sha256=sha256,
        enqueued_at=timezone.now(),
    )
    document.file.save(filename, File(fileobj), save=False)
    # If saving the row fails, the stored file must not outlive it.
    stored = document.file.name
    try:
        document.save()
    except Exception:
        document.file.storage.delete(stored)
        raise
    if enqueue:
        from .tasks import ingest_document_task

        ingest_document_task.delay_on_commit(document.pk)
    return document


def document_create_from_path(
    *, owner: AbstractBaseUser, path: str | Path, workspace: Workspace | None = None, title: str = ""
) -> Document:
    path = Path(path)
    with path.open("rb") as handle:
        return document_create(owner=owner, workspace=workspace, fileobj=handle, filename=path.name, title=title)


def _claim_for_extraction(document_id: int) -> datetime | None:
    """Take the document for extraction: the lease's end (the claim's token), or None."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    claimable = Q(status=Document.Status.UPLOADED) | Q(
        status=Document.Status.EXTRACTING, lease_expires_at__lt=now
    )
    updated = (
        Document.objects.filter(claimable, pk=document_id)
        .update(status=Document.Status.EXTRACTING, lease_expires_at=lease, error="")
    )
    return lease if updated == 1 else None


class _ExtractionLease:
    """Renews a claimed extraction's lease while it runs (masscer.leases): compare-and-set on
    the lease's end, so a claim someone else took over is not renewed."""

    def __init__(self, document_id: int, until: datetime) -> None:
        self.document_id, self.until = document_id, until

    def renew(self) -> bool:
        until = timezone.now() + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
        renewed = Document.objects.filter(
            pk=self.document_id, status=Document.Status.EXTRACTING, lease_expires_at=self.until
        ).update(lease_expires_at=until)
        if renewed:
            self.until = until
        return renewed == 1


@transaction.atomic
def document_fail(*, document_id: int, error: str) -> None:
    """Mark the document failed; the pages stored while it was read go (a failed document has
    no text), `pages_extracted` stays to tell how far it got."""
    failed = (
        Document.objects.filter(pk=document_id)
        .exclude(status=Document.Status.READY)
        .update(status=Document.Status.FAILED, error=error, lease_expires_at=None)
    )
    if failed:
        Page.objects.filter(document_id=document_id).delete()


def document_extract(*, document_id: int, on_progress: Callable[[], object] | None = None) -> Document:
    """Extract pages of an uploaded document; a no-op if another worker has it or it is done.

    The extraction runs in a child process with CPU and memory limits, so a hostile
    file fails the document, not the worker. Pages are stored as the child reads them
    (`pages_extracted` of `page_count`), and `on_progress()` is called after each stored
    batch, so a caller can start on the first pages of a long PDF; the document is ready,
    with its final text, only when the whole file was read.
    """
    lease = _claim_for_extraction(document_id)
    if lease is None:
        return Document.objects.get(pk=document_id)
    document = Document.objects.get(pk=document_id)
    writer = _PageWriter(document_id, on_progress)
    try:
        with heartbeat().hold(("document", document_id), _ExtractionLease(document_id, lease).renew):
            extracted = _extract(document, writer.add)
    except ExtractionError as exc:
        document_fail(document_id=document_id, error=str(exc))
        return Document.objects.get(pk=document_id)
    except FileNotFoundError:
        document_fail(document_id=document_id, error="The uploaded file is missing from storage.")
        return Document.objects.get(pk=document_id)
    tokens = extracted.tokens if extracted.tokens is not None else sum(count_tokens(t) for t in extracted.pages)
    _store_pages(document, extracted.kind, extracted.title, extracted.pages, tokens)
    return Document.objects.get(pk=document_id)


def _extract(document: Document, on_pages: PageSink) -> Extracted:
    return extract_isolated(
        document.file.path,
        filename=document.filename,
        max_bytes=settings.MASSCER_MAX_UPLOAD_BYTES,
        max_pages=settings.MASSCER_MAX_PAGES,
        cpu_seconds=settings.MASSCER_EXTRACT_CPU_SECONDS,
        memory_bytes=settings.MASSCER_EXTRACT_MEMORY_BYTES,
        # Counted inside the limited child, which stops at the limit.
        max_tokens=settings.MASSCER_MAX_DOCUMENT_TOKENS,
        on_pages=on_pages,
        # A long PDF is read by this many children at once; the pages still come in order.
        processes=settings.MASSCER_EXTRACT_PROCESSES,
    )


class _PageWriter:
    """Stores the pages the extraction child reports, a batch at a time (at most every
    FLUSH_SECONDS, so a small file costs one write and a long PDF shows its progress).

    Writes are idempotent (a page is stored once; a second extraction after a lost lease
    reads the same text) and only while the document is being extracted.
    """

    FLUSH_SECONDS = 0.25

    def __init__(self, document_id: int, on_progress: Callable[[], object] | None) -> None:
        self.document_id = document_id
        self.on_progress = on_progress
        self.waiting: list[Page] = []
        self.flushed_at = time.monotonic()

    def add(self, total: int, first: int, texts: list[str]) -> None:
        self.waiting.extend(
            Page(document_id=self.document_id, number=number, text=text)
            for number, text in enumerate(texts, start=first)
        )
        last = first + len(texts) - 1
        if last >= total or time.monotonic() - self.flushed_at >= self.FLUSH_SECONDS:
            self._flush(total, last)

    def _flush(self, total: int, last: int) -> None:
        with transaction.atomic():
            extracting = Document.objects.filter(pk=self.document_id, status=Document.Status.EXTRACTING)
            if extracting.exists():
                Page.objects.bulk_create(self.waiting, ignore_conflicts=True)
                extracting.update(page_count=total)
                extracting.filter(pages_extracted__lt=last).update(pages_extracted=last)
        self.waiting = []
        self.flushed_at = time.monotonic()
        if self.on_progress is not None:
            self.on_progress()


@transaction.atomic
def _store_pages(document: Document, kind: str, title: str, pages: list[str], tokens: int) -> None:
    """Make the document ready with its final text: the pages not stored while it was read
    are added (those that were are the same text: extraction is deterministic)."""
    Page.objects.filter(document=document, number__gt=len(pages)).delete()
    Page.objects.bulk_create(
        [Page(document=document, number=number, text=text) for number, text in enumerate(pages, start=1)],
        ignore_conflicts=True,
    )
    fields: dict[str, object] = {
        "status": Document.Status.READY,
        "kind": kind,
        "page_count": len(pages),
        "pages_extracted": len(pages),
        "token_count": tokens,
        "lease_expires_at": None,
    }
    if title and document.title == Path(document.filename).stem:
        fields["title"] = title[:300]
    Document.objects.filter(pk=document.pk, status=Document.Status.EXTRACTING).update(**fields)


def document_requeue_stale(*, older_than: timedelta) -> int:
    """Re-send extraction for documents whose message or worker was lost."""
    from .tasks import ingest_document_task

    now = timezone.now()
    stale = Document.objects.filter(
        Q(status=Document.Status.UPLOADED, enqueued_at__lt=now - older_than)
        | Q(status=Document.Status.EXTRACTING, lease_expires_at__lt=now)
    ).values_list("pk", flat=True)
    ids = list(stale[:500])
    Document.objects.filter(pk__in=ids).update(enqueued_at=now)
    for document_id in ids:
        ingest_document_task.delay(document_id)
    return len(ids)


@transaction.atomic
def document_delete(*, actor: AbstractBaseUser, document: Document) -> None:
    """Delete a document and, after commit, its file (its uploader or a workspace admin)."""
    require_change(user=actor, obj=document, action="delete it")
    stored = document.file.name
    storage = document.file.storage
    document.delete()
    transaction.on_commit(lambda: storage.delete(stored))
