"""Who may change what inside a workspace: the rules every service checks before it writes.

* A workspace's documents, conversations, agents and jobs are changed or deleted only by their
  creator or an admin of the workspace (`require_change`); attaching material to an agent
  changes the agent.
* Completions are reviewed (approved, rejected, edited, regenerated, flagged or resolved as
  near-duplicates) only by reviewers and admins of their workspace (`require_review`).
* Members are added and removed only by admins of the workspace (`require_admin`).

Every door (page, API, admin, command) calls a service, and the service calls one of these, so
a rule is written once. A refusal is `NotAllowed` (a `PermissionDenied`): 403 on every door.
Outsiders never get this far: the doors look objects up among the user's workspaces first and
answer 404, so a 403 only ever tells a member about an object they can already see. Django's
superuser flag grants nothing here: roles are per workspace.
"""
from __future__ import annotations

from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet

from .models import Membership
from .selectors import can_review, role_in, workspace_ids_of

__all__ = ["NotAllowed", "can_change", "can_review", "changeable", "require_admin", "require_change", "require_review"]

M = TypeVar("M", bound=Model)


class NotAllowed(PermissionDenied):
    """The user's role in the workspace does not allow this write."""


def can_change(*, user: AbstractBaseUser, obj: Any) -> bool:
    """Whether `user` may change or delete `obj` (anything with `owner_id` and `workspace_id`)."""
    role = role_in(user=user, workspace_id=obj.workspace_id)
    if role is None:
        return False  # a creator who has left the workspace keeps no rights in it
    return role == Membership.Role.ADMIN or obj.owner_id == user.pk


def changeable(rows: QuerySet[M], *, user: AbstractBaseUser) -> QuerySet[M]:
    """The rows `user` may change: `can_change` as a filter, for choices offered in forms."""
    member_of = workspace_ids_of(user=user)
    admin_of = workspace_ids_of(user=user, roles=[Membership.Role.ADMIN])
    return rows.filter(workspace__in=member_of).filter(Q(owner=user) | Q(workspace__in=admin_of))


def require_change(*, user: AbstractBaseUser, obj: Any, action: str = "change it") -> None:
    if not can_change(user=user, obj=obj):
        noun = obj._meta.verbose_name
        raise NotAllowed(f"Only the creator of this {noun} or an admin of its workspace may {action}.")


def require_review(*, user: AbstractBaseUser, workspace_id: int, action: str = "review its completions") -> None:
    if not can_review(user=user, workspace_id=workspace_id):
        raise NotAllowed(f"Only reviewers and admins of this workspace may {action}.")


def require_admin(*, user: AbstractBaseUser, workspace_id: int, action: str) -> None:
    if role_in(user=user, workspace_id=workspace_id) != Membership.Role.ADMIN:
        raise NotAllowed(f"Only admins of this workspace can {action}.")
