from __future__ import annotations

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="conversations")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=300, blank=True)
    source_format = models.CharField(max_length=30, default="manual")
    # Identifier in the imported file (ChatGPT conversation id, line number ...).
    external_id = models.CharField(max_length=200, blank=True)
    tags = models.JSONField(default=list, blank=True)
    skipped_parts = models.PositiveIntegerField(default=0)
    imported_at = models.DateTimeField(null=True, blank=True)
    # Set by a reviewer: the whole thread (as it now reads) is fit for multi-turn training data.
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=20, choices=Role.choices)
    content = models.TextField(blank=True)
    name = models.CharField(max_length=200, blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=200, blank=True)
    # Assistant turns only: 1 = learn from this turn, 0 = context only (OpenAI's `weight`).
    weight = models.PositiveSmallIntegerField(default=1, choices=[(0, "Context only"), (1, "Learn from it")])
    # The text before a reviewer's first edit (blank: never edited).
    original_content = models.TextField(blank=True)
    # A logged chat with an agent: ids of the approved completions in its context for this reply.
    material = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="message_unique_position")
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id}#{self.position} {self.role}"


class ConversationImport(models.Model):
    """A big import file worked through in the background (`conversation_import_run`), with its progress."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="imports")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="imports")
    filename = models.CharField(max_length=300)
    format = models.CharField(max_length=30, blank=True)  # the format asked for; blank: recognised
    file = models.FileField(upload_to="imports/%Y/%m/", blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)  # conversations in the file
    done = models.PositiveIntegerField(default=0)  # of them worked through (imported or refused)
    imported = models.PositiveIntegerField(default=0)
    skipped_parts = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When its task was last sent: the sweeper re-sends a queued import whose message was lost.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.filename}"

    @property
    def percent(self) -> int:
        return 100 if not self.total else self.done * 100 // self.total
