"""Team set-up for tests: a member joins the way a person does, by invitation and acceptance."""
from __future__ import annotations

from typing import Any

from workspaces.models import Invitation, Membership
from workspaces.services import invitation_accept, membership_invite, membership_set_role


def add_member(*, actor: Any, workspace: Any, user: Any, role: str = Membership.Role.MEMBER) -> Membership:
    """`user` joins `workspace` with `role` (invited by the admin `actor`, then accepting), or,
    if already a member, gets `role`."""
    if Membership.objects.filter(workspace=workspace, user=user).exists():
        return membership_set_role(actor=actor, workspace=workspace, user=user, role=role)
    membership_invite(actor=actor, workspace=workspace, username=user.get_username(), role=role)
    return invitation_accept(user=user, invitation=Invitation.objects.get(workspace=workspace, user=user))
