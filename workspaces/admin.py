"""Workspaces in the back office: read only. Members are managed on the workspace's page, whose
services (`membership_add`, `membership_remove`) let only the workspace's admins do it."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from masscer.admin_common import ReadOnlyAdmin

from .models import Membership, Workspace


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    list_display = ["name", "personal_for", "created_at"]
    list_select_related = ["personal_for"]
    raw_id_fields = ["personal_for"]
    inlines = [MembershipInline]
    workspace_path = "pk"
