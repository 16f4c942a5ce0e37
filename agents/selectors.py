"""Reads of agents."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from workspaces.selectors import visible_to

from .models import Agent


def agents_for(*, user: AbstractBaseUser) -> QuerySet[Agent]:
    return visible_to(Agent.objects.all(), user=user).order_by("name", "id")


def agent_by_slug(*, workspace_id: int, slug: str) -> Agent | None:
    return Agent.objects.filter(workspace_id=workspace_id, slug=slug).first()
