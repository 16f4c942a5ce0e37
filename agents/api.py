"""API: agents (create, list, read, change, delete).

Any member of a workspace creates agents and reads its agents; changing or deleting one is
for its creator or an admin of the workspace (the services check; 403 otherwise).
"""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from masscer.api_common import ERRORS, Id, Page, Text, get_or_404, user_of, username
from workspaces.selectors import workspaces_for

from .models import Agent
from .retrieval import explain
from .selectors import agents_for
from .services import agent_create, agent_delete, agent_update
from .turns import examples_k

router = Router(tags=["agents"])

class AgentParams(Schema):
    model: Text | None = Field(None, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    context_budget: int | None = Field(
        None, ge=0, le=200_000, description="Tokens of material in context per turn (null: the default, 1,500)."
    )
    log_chats: bool | None = Field(
        None, description="Keep chats held with the agent (/v1 and the playground) as conversations."
    )


class AgentIn(AgentParams):
    name: Text = Field(..., min_length=1, max_length=200)
    slug: Text = Field("", max_length=100)
    system_prompt: Text = Field("", max_length=100_000)
    workspace: Id | None = None


class AgentPatch(AgentParams):
    name: Text | None = Field(None, min_length=1, max_length=200)
    slug: Text | None = Field(None, min_length=1, max_length=100)
    system_prompt: Text | None = Field(None, min_length=1, max_length=100_000)


class AgentOut(Schema):
    id: int
    workspace_id: int
    owner: str | None
    name: str
    slug: str
    system_prompt: str
    model: str
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    frequency_penalty: float | None
    context_budget: int | None
    log_chats: bool
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_owner(obj: Agent) -> str | None:
        return username(obj.owner)



def _visible(request: HttpRequest) -> Any:
    return agents_for(user=user_of(request)).select_related("owner")


@router.post("", response={201: AgentOut, **ERRORS})
def agents_create(request: HttpRequest, payload: AgentIn) -> Status[Agent]:
    user = user_of(request)
    target = get_or_404(workspaces_for(user=user), payload.workspace, "workspace") if payload.workspace else None
    params = payload.model_dump(exclude={"name", "slug", "system_prompt", "workspace"}, exclude_none=True)
    agent = agent_create(
        owner=user, name=payload.name, workspace=target, slug=payload.slug, system_prompt=payload.system_prompt,
        **params,
    )
    return Status(201, _visible(request).get(pk=agent.pk))


@router.get("", response={200: list[AgentOut], **ERRORS})
@paginate(Page)
def agents_list(request: HttpRequest) -> Any:
    return _visible(request)


@router.get("/{int:agent_id}", response={200: AgentOut, **ERRORS})
def agents_get(request: HttpRequest, agent_id: Id) -> Agent:
    return get_or_404(_visible(request), agent_id, "agent")


@router.patch("/{int:agent_id}", response={200: AgentOut, **ERRORS})
def agents_update(request: HttpRequest, agent_id: Id, payload: AgentPatch) -> Agent:
    """Change an agent's settings (its creator or a workspace admin; others get 403)."""
    agent = get_or_404(_visible(request), agent_id, "agent")
    fields = payload.model_dump(exclude_unset=True)
    for key in ("name", "slug", "system_prompt", "log_chats"):
        if key in fields and fields[key] is None:
            del fields[key]  # these cannot be cleared; null means "leave as it is"
    if "model" in fields and fields["model"] is None:
        fields["model"] = ""  # empty: the server's default model
    return agent_update(actor=user_of(request), agent=agent, **fields)


@router.delete("/{int:agent_id}", response={204: None, **ERRORS})
def agents_delete(request: HttpRequest, agent_id: Id) -> Status[None]:
    """Delete an agent (its creator or a workspace admin; others get 403)."""
    agent_delete(actor=user_of(request), agent=get_or_404(_visible(request), agent_id, "agent"))
    return Status(204, None)


class ExplainQuery(Schema):
    q: Text = Field("", max_length=4000, description="The question a user might ask.")
    tags: list[Text] = Field(default_factory=list, max_length=20, description="The conversation's tags.")


class RetrievedOut(Schema):
    completion_id: int
    question: str
    rule: str
    score: float | None
    tokens: int


class ExplainOut(Schema):
    budget: int
    used: int
    picked: list[RetrievedOut]
    left_out: list[RetrievedOut] = Field(..., description="Matched, but over the token budget.")


@router.get("/{int:agent_id}/explain", response={200: ExplainOut, **ERRORS})
def agents_explain(request: HttpRequest, agent_id: Id, query: Query[ExplainQuery]) -> Any:
    """Why this answer: the material the agent would put in context for `q`, with rule, score and tokens."""
    agent = get_or_404(_visible(request), agent_id, "agent")
    found = explain(agent, query.q, k=examples_k(), tags=query.tags)
    return {"budget": found.budget, "used": found.used, "picked": found.picked, "left_out": found.left_out}
