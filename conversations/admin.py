"""Conversations in the back office: read only (edited in the app), deleted through `conversation_delete`."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from masscer.admin_common import ReadOnly, ServiceDeleteAdmin

from .models import Conversation, Message
from .services import conversation_delete


class MessageInline(ReadOnly, admin.TabularInline):
    """Messages are added in the app (`message_add`), which checks who may."""

    model = Message
    extra = 0
    ordering = ("position",)
    fields = ("position", "role", "content", "name", "tool_calls", "tool_call_id")


@admin.register(Conversation)
class ConversationAdmin(ServiceDeleteAdmin):
    list_display = (
        "id", "title", "owner", "source_format", "message_count", "skipped_parts", "imported_at", "created_at"
    )
    list_display_links = ("id", "title")
    list_filter = ("source_format",)
    list_select_related = ("owner",)
    search_fields = ("title", "external_id", "owner__username")
    raw_id_fields = ("owner",)
    readonly_fields = ("imported_at", "created_at", "updated_at")
    date_hierarchy = "created_at"
    inlines = (MessageInline,)

    def delete_with_service(self, actor: Any, obj: Conversation) -> None:
        conversation_delete(actor=actor, conversation=obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        # One query for the counts instead of one per row.
        return super().get_queryset(request).annotate(message_count=Count("messages", distinct=True))

    @admin.display(ordering="message_count", description="messages")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count  # type: ignore[attr-defined]
