"""Documents in the back office: read only, deleted through `document_delete` (see masscer.admin_common)."""
from __future__ import annotations

from typing import Any

from django.contrib import admin

from masscer.admin_common import ReadOnlyAdmin, ServiceDeleteAdmin

from .models import Document, Page
from .services import document_delete


@admin.register(Document)
class DocumentAdmin(ServiceDeleteAdmin):
    list_display = ["title", "owner", "kind", "status", "page_count", "token_count", "created_at"]
    list_filter = ["status", "kind"]
    search_fields = ["title", "filename"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    readonly_fields = ["sha256", "size", "error", "page_count", "token_count", "chunk_count"]

    def delete_with_service(self, actor: Any, obj: Document) -> None:
        document_delete(actor=actor, document=obj)


@admin.register(Page)
class PageAdmin(ReadOnlyAdmin):
    list_display = ["document", "number"]
    list_select_related = ["document"]
    raw_id_fields = ["document"]
    workspace_path = "document__workspace"
