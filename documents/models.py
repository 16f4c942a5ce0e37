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
    page_count = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    chunk_count = models.PositiveIntegerField(default=0)
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


class Page(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="pages")
    number = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["document", "number"]
        constraints = [models.UniqueConstraint(fields=["document", "number"], name="page_unique_number")]

    def __str__(self) -> str:
        return f"{self.document_id} p.{self.number}"
