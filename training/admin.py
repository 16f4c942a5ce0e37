from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Chunk, Completion, TrainingJob, WorkItem


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "status", "requested_count", "created_count", "shortfall", "calls", "created_at"]
    list_filter = ["status", "style", "model"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner", "documents", "conversations", "agents"]
    readonly_fields = ["created_count", "calls", "prompt_tokens", "completion_tokens", "shortfall_reasons", "error"]


@admin.register(WorkItem)
class WorkItemAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "chunk", "quota", "made", "calls", "status", "lease_expires_at"]
    list_filter = ["status"]
    list_select_related = ["job", "chunk"]
    raw_id_fields = ["job", "chunk"]


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ["id", "document", "conversation", "index", "token_count"]
    list_select_related = ["document", "conversation"]
    raw_id_fields = ["document", "conversation"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "question", "status", "job", "model", "edited", "reviewed_by", "created_at"]
    list_filter = ["status", "model", "created_at"]
    search_fields = ["question", "answer"]
    list_select_related = ["job", "reviewed_by"]
    raw_id_fields = ["job", "chunk", "reviewed_by"]
    actions = ["approve", "reject"]

    @admin.action(description="Approve selected completions")
    def approve(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._review(request, queryset, Completion.Status.APPROVED)

    @admin.action(description="Reject selected completions")
    def reject(self, request: HttpRequest, queryset: QuerySet[Completion]) -> None:
        self._review(request, queryset, Completion.Status.REJECTED)

    def _review(self, request: HttpRequest, queryset: QuerySet[Completion], status: str) -> None:
        count = services.completions_review_bulk(completions=queryset, status=status, reviewer=request.user)
        self.message_user(request, f"{count} completions marked {status}.", messages.SUCCESS)
