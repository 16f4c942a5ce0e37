"""Who may see and do what: every object query goes through these."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from .models import Invitation, Membership, Workspace


def workspace_ids_of(*, user: AbstractBaseUser, roles: Iterable[str] | None = None) -> QuerySet[Membership]:
    """The ids of the workspaces `user` belongs to (with one of `roles`, if given), as a subquery."""
    rows = Membership.objects.filter(user=user) if user.is_authenticated else Membership.objects.none()
    if roles is not None:
        rows = rows.filter(role__in=list(roles))
    return rows.values("workspace_id")


def review_workspace_ids(*, user: AbstractBaseUser) -> set[int]:
    """Workspaces where the user may approve and reject (one query, for bulk checks)."""
    return set(workspace_ids_of(user=user, roles=Membership.REVIEW_ROLES).values_list("workspace_id", flat=True))


def roles_of(*, user: AbstractBaseUser) -> dict[int, str]:
    """The user's role in each of their workspaces, by workspace id."""
    return dict(Membership.objects.filter(user=user).values_list("workspace_id", "role"))


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
    return queryset.filter(**{f"{path}__in": workspace_ids_of(user=user)})


def invitations_for(*, user: AbstractBaseUser) -> QuerySet[Invitation]:
    """The invitations waiting for `user`'s answer (made to their login name)."""
    mine = Q(user=user) | Q(user__isnull=True, username=user.get_username())
    return Invitation.objects.filter(mine).select_related("workspace", "invited_by")


def invitations_of(*, workspace_id: int) -> QuerySet[Invitation]:
    """A workspace's invitations not yet answered (its admins see them)."""
    return Invitation.objects.filter(workspace_id=workspace_id).order_by("username")
