"""Reads of agents."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Q, QuerySet

from workspaces.selectors import visible_to

from .models import Agent


def agents_for(*, user: AbstractBaseUser) -> QuerySet[Agent]:
    return visible_to(Agent.objects.all(), user=user).order_by("name", "id")


def agent_by_slug(*, workspace_id: int, slug: str) -> Agent | None:
    return Agent.objects.filter(workspace_id=workspace_id, slug=slug).first()


def agents_with_counts(*, user: AbstractBaseUser) -> QuerySet[Agent]:
    """The user's agents, each with `pending`, `approved` and `rejected` counts of its material (one query)."""

    def counted(status: str) -> Count:
        return Count("assignments", filter=Q(assignments__completion__status=status))

    return (
        agents_for(user=user)
        .select_related("workspace")
        .annotate(pending=counted("pending"), approved=counted("approved"), rejected=counted("rejected"))
    )
