"""API: the user's workspaces and personal API tokens."""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status

from masscer.api_common import ERRORS, Id, Text, get_or_404, user_of

from .models import ApiToken, Membership
from .services import api_token_create, api_token_revoke, api_tokens_of

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
