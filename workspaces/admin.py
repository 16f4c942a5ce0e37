"""Workspaces in the back office: read only. Members are managed on the workspace's page, whose
services (`membership_invite`, `membership_remove`) let only the workspace's admins do it."""
from __future__ import annotations

from django.contrib import admin

from masscer.admin_common import ReadOnly, ReadOnlyAdmin

from .models import Invitation, Membership, Workspace


class MembershipInline(ReadOnly, admin.TabularInline):
    """Members are managed on the workspace page, through `membership_invite`/`membership_remove`."""

    model = Membership
    raw_id_fields = ["user"]
    extra = 0


class InvitationInline(ReadOnly, admin.TabularInline):
    """Invitations are made and answered on the workspace pages (`membership_invite`)."""

    model = Invitation
    fk_name = "workspace"
    raw_id_fields = ["user", "invited_by"]
    extra = 0


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    list_display = ["name", "personal_for", "created_at"]
    list_select_related = ["personal_for"]
    raw_id_fields = ["personal_for"]
    inlines = [MembershipInline, InvitationInline]
    workspace_path = "pk"
