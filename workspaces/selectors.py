"""Who may see and do what: every object query goes through these."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from .models import Membership, Workspace


def workspaces_for(*, user: AbstractBaseUser) -> QuerySet[Workspace]:
    return Workspace.objects.filter(memberships__user=user).order_by("name", "id")


def role_in(*, user: AbstractBaseUser, workspace_id: int) -> str | None:
    if not user.is_authenticated:
        return None
    membership = Membership.objects.filter(user=user, workspace_id=workspace_id).only("role").first()
    return membership.role if membership else None


def can_review(*, user: AbstractBaseUser, workspace_id: int) -> bool:
    return role_in(user=user, workspace_id=workspace_id) in Membership.REVIEW_ROLES


def visible_to(queryset: QuerySet[Any], *, user: AbstractBaseUser, path: str = "workspace") -> QuerySet[Any]:
    """Rows of `queryset` in a workspace the user belongs to (`path` leads to the workspace)."""
    if not user.is_authenticated:
        return queryset.none()
    workspace_ids = Membership.objects.filter(user=user).values("workspace_id")
    return queryset.filter(**{f"{path}__in": workspace_ids})
