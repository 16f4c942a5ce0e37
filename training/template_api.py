"""API: prompt templates of a workspace, their versions, and a preview on a real chunk (#15.3).

Every write calls `services.templates`, which checks the workspace rules (403 with the reason);
workspaces, templates, sources and agents are looked up among the user's workspaces (404 for
anything else). A template whose texts break the rules is refused with 400 and the reasons.
"""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.responses import Status

from agents.models import Agent
from agents.selectors import agents_for
from conversations.selectors import conversations_for
from documents.selectors import documents_for
from masscer.api_common import ERRORS, Id, Text, get_or_404, user_of, username
from workspaces.models import Workspace
from workspaces.selectors import workspaces_for

from .models import PromptTemplate, PromptTemplateVersion
from .services.templates import (
    MAX_TEMPLATE_CHARS,
    NAME_CHARS,
    Roles,
    template_create,
    template_current,
    template_delete,
    template_preview,
    template_save,
    template_set_roles,
    templates_for,
)

router = Router(tags=["templates"])

class TemplateIn(Schema):
    name: Text = Field(..., min_length=1, max_length=NAME_CHARS)
    system: Text = Field("", max_length=MAX_TEMPLATE_CHARS, description="The system message; empty: the built-in.")
    user: Text = Field(..., max_length=MAX_TEMPLATE_CHARS, description="The user message; needs {source} and {count}.")
    is_default: bool = Field(False, description="The workspace's default template (admins only).")
    agent: Id | None = Field(None, description="Jobs for this agent use the template unless they name another.")


class VersionIn(Schema):
    system: Text = Field("", max_length=MAX_TEMPLATE_CHARS)
    user: Text = Field(..., max_length=MAX_TEMPLATE_CHARS)


class RolesIn(Schema):
    is_default: bool | None = Field(None, description="Omitted: unchanged.")
    agent: Id | None = Field(None, description="Omitted: unchanged; null: no agent.")


class PreviewIn(VersionIn):
    document: Id | None = None
    conversation: Id | None = None
    index: int = Field(0, ge=0, le=1_000_000, description="Which chunk of the source (0 is the first).")
    agent: Id | None = Field(None, description="Show this agent's latest approved pairs as examples.")
    question_type: Text = Field("factual", max_length=20)
    audience: Text = Field("", max_length=200)
    difficulty: Text = Field("", max_length=10)


class VersionOut(Schema):
    number: int
    system: str
    user: str
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_created_by(obj: PromptTemplateVersion) -> str | None:
        return username(obj.created_by)


class TemplateOut(Schema):
    id: int
    workspace_id: int
    name: str
    owner: str | None
    is_default: bool
    agent: int | None
    archived: bool
    created_at: datetime
    current: VersionOut | None

    @staticmethod
    def resolve_owner(obj: PromptTemplate) -> str | None:
        return username(obj.owner)

    @staticmethod
    def resolve_agent(obj: PromptTemplate) -> int | None:
        return obj.agent_id

    @staticmethod
    def resolve_current(obj: PromptTemplate) -> PromptTemplateVersion | None:
        return template_current(obj)


class TemplateDetailOut(TemplateOut):
    versions: list[VersionOut]

    @staticmethod
    def resolve_versions(obj: PromptTemplate) -> list[PromptTemplateVersion]:
        return list(obj.versions.select_related("created_by").order_by("-number"))


class PreviewOut(Schema):
    system: str
    user: str
    chunk: str = Field(..., description='Which chunk was rendered, e.g. "chunk 0 of Manual".')
    chunks: int = Field(..., description="How many chunks the source has.")


class DeletedOut(Schema):
    outcome: Literal["deleted", "archived"] = Field(
        ..., description="archived: jobs used the template, so it is kept for them but offered to no new job."
    )


def _workspace(request: HttpRequest, workspace_id: int) -> Workspace:
    return get_or_404(workspaces_for(user=user_of(request)), workspace_id, "workspace")


def _template(request: HttpRequest, template_id: int) -> PromptTemplate:
    return get_or_404(templates_for(user=user_of(request), archived=None), template_id, "template")


def _agent(request: HttpRequest, agent_id: int | None) -> Agent | None:
    return get_or_404(agents_for(user=user_of(request)), agent_id, "agent") if agent_id else None


@router.get("/workspaces/{int:workspace_id}/templates", response={200: list[TemplateOut], **ERRORS})
def templates_list(request: HttpRequest, workspace_id: Id, archived: bool = False) -> Any:
    workspace = _workspace(request, workspace_id)
    return templates_for(user=user_of(request), archived=archived).filter(workspace=workspace).order_by("name", "id")


@router.post("/workspaces/{int:workspace_id}/templates", response={201: TemplateOut, **ERRORS})
def templates_create(request: HttpRequest, workspace_id: Id, payload: TemplateIn) -> Status[PromptTemplate]:
    workspace = _workspace(request, workspace_id)
    template = template_create(
        actor=user_of(request), workspace=workspace, name=payload.name, system=payload.system, user=payload.user,
        roles=Roles(is_default=payload.is_default, agent=_agent(request, payload.agent)),
    )  # fmt: skip
    return Status(201, template)


@router.post("/workspaces/{int:workspace_id}/templates/preview", response={200: PreviewOut, **ERRORS})
def templates_preview(request: HttpRequest, workspace_id: Id, payload: PreviewIn) -> dict[str, Any]:
    """Render texts (saved or not) on a real chunk of a document or conversation; nothing is stored."""
    workspace = _workspace(request, workspace_id)
    user = user_of(request)
    document = get_or_404(documents_for(user=user), payload.document, "document") if payload.document else None
    conversation = (
        get_or_404(conversations_for(user=user), payload.conversation, "conversation") if payload.conversation else None
    )
    preview = template_preview(
        workspace=workspace, system=payload.system, user=payload.user, document=document, conversation=conversation,
        index=payload.index, agent=_agent(request, payload.agent), question_type=payload.question_type,
        audience=payload.audience, difficulty=payload.difficulty,
    )  # fmt: skip
    return {"system": preview.system, "user": preview.user, "chunk": preview.chunk_label, "chunks": preview.chunks}


@router.get("/templates/{int:template_id}", response={200: TemplateDetailOut, **ERRORS})
def templates_get(request: HttpRequest, template_id: Id) -> PromptTemplate:
    return _template(request, template_id)


@router.post("/templates/{int:template_id}/versions", response={201: VersionOut, **ERRORS})
def templates_save(request: HttpRequest, template_id: Id, payload: VersionIn) -> Status[PromptTemplateVersion]:
    """Save new texts as the next version (the same texts as the current version make none)."""
    template = _template(request, template_id)
    return Status(201, template_save(actor=user_of(request), template=template, system=payload.system,
                                     user=payload.user))  # fmt: skip


@router.patch("/templates/{int:template_id}", response={200: TemplateOut, **ERRORS})
def templates_roles(request: HttpRequest, template_id: Id, payload: RolesIn) -> PromptTemplate:
    template = _template(request, template_id)
    given = payload.model_dump(exclude_unset=True)
    is_default = given["is_default"] if given.get("is_default") is not None else template.is_default
    agent = _agent(request, given["agent"]) if "agent" in given else template.agent
    template_set_roles(actor=user_of(request), template=template, roles=Roles(is_default=is_default, agent=agent))
    return _template(request, template_id)


@router.delete("/templates/{int:template_id}", response={200: DeletedOut, **ERRORS})
def templates_delete(request: HttpRequest, template_id: Id) -> dict[str, str]:
    """Delete a template no job used; archive one that jobs used."""
    return {"outcome": template_delete(actor=user_of(request), template=_template(request, template_id))}
