"""Writes of workspaces and memberships."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from .models import Membership, Workspace


@transaction.atomic
def workspace_create(*, name: str, admin: AbstractBaseUser) -> Workspace:
    workspace = Workspace.objects.create(name=name.strip() or "Workspace")
    Membership.objects.create(workspace=workspace, user=admin, role=Membership.Role.ADMIN)
    return workspace


def workspace_personal(*, user: AbstractBaseUser) -> Workspace:
    """The user's own workspace, created (with the user as admin) on first use."""
    existing = Workspace.objects.filter(personal_for=user).first()
    if existing:
        return existing
    try:
        with transaction.atomic():
            workspace = Workspace.objects.create(name=f"{user.get_username()}'s workspace", personal_for=user)
            Membership.objects.create(workspace=workspace, user=user, role=Membership.Role.ADMIN)
            return workspace
    except IntegrityError:
        # Another request created it at the same moment.
        return Workspace.objects.get(personal_for=user)


def membership_add(*, workspace: Workspace, user: AbstractBaseUser, role: str = Membership.Role.MEMBER) -> Membership:
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role {role!r}; use admin, reviewer or member.")
    membership, _ = Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
    return membership


def membership_remove(*, workspace: Workspace, user: AbstractBaseUser) -> None:
    Membership.objects.filter(workspace=workspace, user=user).delete()


def workspace_for_write(*, user: AbstractBaseUser, workspace: Workspace | None) -> Workspace:
    """The workspace a new object goes to: the given one (if the user belongs to it) or theirs."""
    if workspace is None:
        return workspace_personal(user=user)
    if not Membership.objects.filter(workspace=workspace, user=user).exists():
        raise ValidationError("You are not a member of this workspace.", code="forbidden")
    return workspace
