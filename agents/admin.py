"""Agents in the back office: read only (edited on the agent's page), deleted through `agent_delete`."""
from __future__ import annotations

from typing import Any

from django.contrib import admin

from masscer.admin_common import ServiceDeleteAdmin

from .models import Agent
from .services import agent_delete


@admin.register(Agent)
class AgentAdmin(ServiceDeleteAdmin):
    list_display = ["name", "slug", "owner", "model", "created_at"]
    search_fields = ["name", "slug"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]

    def delete_with_service(self, actor: Any, obj: Agent) -> None:
        agent_delete(actor=actor, agent=obj)
