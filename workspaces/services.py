"""Writes of workspaces and memberships."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from .models import ApiToken, Invitation, Membership, Workspace
from .permissions import NotAllowed, require_admin


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


def membership_invite(
    *, actor: AbstractBaseUser, workspace: Workspace, username: str, role: str = Membership.Role.MEMBER
) -> Membership | None:
    """Invite the person with this login name to the workspace (admins only), or change the role
    of someone who is already a member.

    Nobody is added without their consent: an invitation waits until its user accepts it.
    Returns the membership when `username` is already a member (its role changed); otherwise
    None, and the invitation is kept whether or not such a login exists (an account made later
    with that name sees it), so neither the answer nor the pending list tells which names do.
    """
    require_admin(user=actor, workspace_id=workspace.pk, action="add members")
    _check_role(role)
    user = get_user_model().objects.filter(username=username).first()
    if user is not None and Membership.objects.filter(workspace=workspace, user=user).exists():
        return membership_set_role(actor=actor, workspace=workspace, user=user, role=role)
    Invitation.objects.update_or_create(
        workspace=workspace, username=username, defaults={"role": role, "invited_by": actor, "user": user}
    )
    return None


def membership_set_role(
    *, actor: AbstractBaseUser, workspace: Workspace, user: AbstractBaseUser, role: str
) -> Membership:
    """Change a member's role (admins of the workspace only).

    A workspace keeps at least one admin: the last one cannot step down.
    """
    require_admin(user=actor, workspace_id=workspace.pk, action="change members' roles")
    _check_role(role)
    with transaction.atomic():
        # Locked, so two admins demoting each other at the same moment cannot both succeed.
        admins = list(
            Membership.objects.select_for_update()
            .filter(workspace=workspace, role=Membership.Role.ADMIN)
            .values_list("user_id", flat=True)
        )
        if role != Membership.Role.ADMIN and admins == [user.pk]:
            raise ValidationError(
                "A workspace keeps at least one admin: make someone else admin first.", code="last_admin"
            )
        updated = Membership.objects.filter(workspace=workspace, user=user).update(role=role)
    if not updated:
        raise ValidationError("They are not a member: invite them, they join when they accept.", code="not_member")
    return Membership.objects.get(workspace=workspace, user=user)


def _check_role(role: str) -> None:
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role {role!r}; use admin, reviewer or member.")


def invitation_accept(*, user: AbstractBaseUser, invitation: Invitation) -> Membership:
    """The invited user joins the workspace with the invitation's role."""
    _require_invitee(user=user, invitation=invitation)
    with transaction.atomic():
        membership, _ = Membership.objects.get_or_create(
            workspace_id=invitation.workspace_id, user=user, defaults={"role": invitation.role}
        )
        invitation.delete()
    return membership


def invitation_decline(*, user: AbstractBaseUser, invitation: Invitation) -> None:
    _require_invitee(user=user, invitation=invitation)
    invitation.delete()


def invitation_revoke(*, actor: AbstractBaseUser, invitation: Invitation) -> None:
    require_admin(user=actor, workspace_id=invitation.workspace_id, action="withdraw invitations")
    invitation.delete()


def _require_invitee(*, user: AbstractBaseUser, invitation: Invitation) -> None:
    if invitation.username != user.get_username() or invitation.user_id not in (None, user.pk):
        raise NotAllowed("Only the invited person can answer an invitation.")


def membership_remove(*, actor: AbstractBaseUser, workspace: Workspace, user: AbstractBaseUser) -> None:
    """Remove `user` from the workspace (admins only; not themselves, so it keeps an admin)."""
    require_admin(user=actor, workspace_id=workspace.pk, action="remove members")
    if user.pk == actor.pk:
        raise ValidationError("Admins cannot remove themselves; ask another admin.", code="self")
    Membership.objects.filter(workspace=workspace, user=user).delete()


def workspace_for_write(*, user: AbstractBaseUser, workspace: Workspace | None) -> Workspace:
    """The workspace a new object goes to: the given one (if the user belongs to it) or theirs."""
    if workspace is None:
        return workspace_personal(user=user)
    if not Membership.objects.filter(workspace=workspace, user=user).exists():
        raise ValidationError("You are not a member of this workspace.", code="forbidden")
    return workspace


# --- API tokens ---------------------------------------------------------------------------

TOKEN_PREFIX = "msk_"
TOKEN_NAME_CHARS = ApiToken._meta.get_field("name").max_length or 100
# Writing last_used_at on every request would turn every read into a write.
TOKEN_TOUCH_EVERY = timedelta(minutes=1)


def api_token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@transaction.atomic
def api_token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A new token for `user`; the secret is returned once and never stored."""
    name = name.strip()
    if not name:
        raise ValidationError("Give the token a name, e.g. the script that will use it.", code="name")
    if len(name) > TOKEN_NAME_CHARS:
        raise ValidationError(f"A token name is at most {TOKEN_NAME_CHARS} characters.", code="name")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=raw[:12], key_hash=api_token_hash(raw))
    return token, raw


def api_token_revoke(*, actor: AbstractBaseUser, token: ApiToken) -> ApiToken:
    """Revoke a token at once; revoking twice keeps the first time. Only its user revokes it."""
    if token.user_id != actor.pk:
        raise NotAllowed("Only the user a token belongs to may revoke it.")
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def api_tokens_of(*, user: AbstractBaseUser) -> QuerySet[ApiToken]:
    """The user's tokens, newest first (a read; here so token code stays in one place)."""
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-id")


def api_token_authenticate(*, raw: str) -> AbstractBaseUser | None:
    """The active user a token belongs to, or None for an unknown or revoked token."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=api_token_hash(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > TOKEN_TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
