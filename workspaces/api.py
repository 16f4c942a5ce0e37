"""API: the user's workspaces and personal API tokens."""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status

from masscer.api_common import ERRORS, Id, Text, get_or_404, user_of

from .models import ApiToken, Invitation, Membership
from .selectors import invitations_for, workspaces_for
from .services import (
    api_token_create,
    api_token_revoke,
    api_tokens_of,
    invitation_accept,
    invitation_decline,
    membership_invite,
)

router = Router(tags=["workspaces"])


class WorkspaceOut(Schema):
    id: int
    name: str
    role: str
    personal: bool


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class InvitationOut(Schema):
    id: int
    workspace_id: int
    workspace: str
    role: str
    invited_by: str | None
    created_at: datetime


class MemberIn(Schema):
    username: Text = Field(..., min_length=1, max_length=150)
    role: Membership.Role = Membership.Role.MEMBER


class MessageOut(Schema):
    detail: str


class TokenIn(Schema):
    name: Text = Field(..., min_length=1, max_length=100)


class TokenCreatedOut(TokenOut):
    token: str = Field(..., description="The secret: shown once, store it now.")


@router.get("/workspaces", response={200: list[WorkspaceOut], **ERRORS})
def workspaces_list(request: HttpRequest) -> list[dict[str, object]]:
    memberships = Membership.objects.filter(user=user_of(request)).select_related("workspace")
    return [
        {
            "id": m.workspace_id,
            "name": m.workspace.name,
            "role": m.role,
            "personal": m.workspace.personal_for_id == m.user_id,
        }
        for m in memberships.order_by("workspace__name", "workspace_id")
    ]


@router.post("/workspaces/{int:workspace_id}/members", response={202: MessageOut, **ERRORS})
def members_invite(request: HttpRequest, workspace_id: Id, payload: MemberIn) -> Status[dict[str, str]]:
    """Invite someone (they join when they accept), or change a member's role. Admins only."""
    workspace = get_or_404(workspaces_for(user=user_of(request)), workspace_id, "workspace")
    actor = user_of(request)
    member = membership_invite(actor=actor, workspace=workspace, username=payload.username, role=payload.role)
    if member is not None:
        return Status(202, {"detail": f"{payload.username} is now {payload.role} here."})
    return Status(202, {"detail": f"If {payload.username!r} has an account, they are invited as {payload.role}."})


@router.get("/invitations", response={200: list[InvitationOut], **ERRORS})
def invitations_list(request: HttpRequest) -> list[dict[str, object]]:
    return [_invitation_out(invitation) for invitation in invitations_for(user=user_of(request))]


@router.post("/invitations/{int:invitation_id}/accept", response={200: WorkspaceOut, **ERRORS})
def invitations_accept(request: HttpRequest, invitation_id: Id) -> dict[str, object]:
    invitation = get_or_404(invitations_for(user=user_of(request)), invitation_id, "invitation")
    membership = invitation_accept(user=user_of(request), invitation=invitation)
    workspace = invitation.workspace
    return {"id": workspace.pk, "name": workspace.name, "role": membership.role, "personal": False}


@router.post("/invitations/{int:invitation_id}/decline", response={204: None, **ERRORS})
def invitations_decline(request: HttpRequest, invitation_id: Id) -> Status[None]:
    invitation = get_or_404(invitations_for(user=user_of(request)), invitation_id, "invitation")
    invitation_decline(user=user_of(request), invitation=invitation)
    return Status(204, None)


def _invitation_out(invitation: Invitation) -> dict[str, object]:
    inviter = invitation.invited_by
    return {
        "id": invitation.pk,
        "workspace_id": invitation.workspace_id,
        "workspace": invitation.workspace.name,
        "role": invitation.role,
        "invited_by": inviter.get_username() if inviter else None,
        "created_at": invitation.created_at,
    }


@router.get("/tokens", response={200: list[TokenOut], **ERRORS}, tags=["tokens"])
def tokens_list(request: HttpRequest) -> list[ApiToken]:
    return list(api_tokens_of(user=user_of(request)))


@router.post("/tokens", response={201: TokenCreatedOut, **ERRORS}, tags=["tokens"])
def tokens_create(request: HttpRequest, payload: TokenIn) -> Status[dict[str, object]]:
    token, raw = api_token_create(user=user_of(request), name=payload.name)
    return Status(201, {**TokenOut.model_validate(token).model_dump(), "token": raw})


@router.delete("/tokens/{int:token_id}", response={204: None, **ERRORS}, tags=["tokens"])
def tokens_revoke(request: HttpRequest, token_id: Id) -> Status[None]:
    token = get_or_404(api_tokens_of(user=user_of(request)), token_id, "token")
    api_token_revoke(actor=user_of(request), token=token)
    return Status(204, None)
