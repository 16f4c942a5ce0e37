from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    ordering = ("position",)
    fields = ("position", "role", "content", "name", "tool_calls", "tool_call_id")


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        # One query for the counts instead of one per row.
        return super().get_queryset(request).annotate(message_count=Count("messages", distinct=True))

    @admin.display(ordering="message_count", description="messages")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count  # type: ignore[attr-defined]
