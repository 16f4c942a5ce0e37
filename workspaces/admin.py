from __future__ import annotations

from django.contrib import admin

from .models import Membership, Workspace


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "personal_for", "created_at"]
    list_select_related = ["personal_for"]
    raw_id_fields = ["personal_for"]
    inlines = [MembershipInline]
