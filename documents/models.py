from __future__ import annotations

import secrets
from datetime import datetime

from django.conf import settings
from django.db import models


def upload_path(instance: Document, filename: str) -> str:
    # Random names: the user's file name is kept in `filename`, never used on disk.
    suffix = ""
    if "." in filename:
        suffix = "." + filename.rsplit(".", 1)[1].lower()[:10]
    return f"documents/{secrets.token_hex(16)}{suffix}"


class Document(models.Model):
    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        EXTRACTING = "extracting", "Extracting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    # Allowed transitions; services enforce them with conditional updates.
    TRANSITIONS: dict[str, set[str]] = {
        Status.UPLOADED: {Status.EXTRACTING, Status.FAILED},
        Status.EXTRACTING: {Status.READY, Status.FAILED, Status.EXTRACTING},
        Status.READY: set(),
        Status.FAILED: set(),
    }

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="documents")
    # Who uploaded it; access goes by workspace membership.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    filename = models.CharField(max_length=300)
    file = models.FileField(upload_to=upload_path, max_length=300)
    kind = models.CharField(max_length=20, blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED, db_index=True)
    error = models.TextField(blank=True)
    # Pages in the file: known (from the PDF's page tree) as soon as extraction starts.
    page_count = models.PositiveIntegerField(default=0)
    # Pages stored so far: they are stored as they are read, so work can start on the first
    # pages of a long PDF (the text is final only once the document is ready).
    pages_extracted = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    # Set when the document is ready and split (training.services.chunks).
    chunk_count = models.PositiveIntegerField(default=0)
    # Its chunks so far were made from the first pages while it was being read; the rest are
    # made once it is ready (training.services.chunks).
    chunks_partial = models.BooleanField(default=False)
    lease_expires_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def progress_label(self) -> str:
        """"p. 12 of 117" while its pages are being read, else ""."""
        if self.status != self.Status.EXTRACTING or not self.page_count:
            return ""
        return f"p. {self.pages_extracted} of {self.page_count}"


class Page(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="pages")
    number = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["document", "number"]
        constraints = [models.UniqueConstraint(fields=["document", "number"], name="page_unique_number")]

    def __str__(self) -> str:
        return f"{self.document_id} p.{self.number}"
