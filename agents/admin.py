from __future__ import annotations

from django.contrib import admin

from .models import Agent


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "model", "created_at"]
    search_fields = ["name", "slug"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
