from __future__ import annotations

from django.contrib import admin

from .models import Document, Page


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "kind", "status", "page_count", "token_count", "created_at"]
    list_filter = ["status", "kind"]
    search_fields = ["title", "filename"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    readonly_fields = ["sha256", "size", "error", "page_count", "token_count", "chunk_count"]


@admin.register(Page)
class PageAdmin(admin.ModelAdmin):
    list_display = ["document", "number"]
    list_select_related = ["document"]
    raw_id_fields = ["document"]
