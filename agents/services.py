"""Writes of agents."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from workspaces.models import Workspace
from workspaces.permissions import require_change
from workspaces.services import workspace_for_write

from .models import Agent


@transaction.atomic
def agent_create(
    *,
    owner: AbstractBaseUser,
    name: str,
    workspace: Workspace | None = None,
    slug: str = "",
    system_prompt: str = "",
    **params: Any,
) -> Agent:
    workspace = workspace_for_write(user=owner, workspace=workspace)
    slug = slugify(slug or name)[:100]
    if not slug:
        raise ValidationError("An agent needs a name made of letters or digits.")
    if Agent.objects.filter(workspace=workspace, slug=slug).exists():
        raise ValidationError(f"The workspace already has an agent called '{slug}'.")
    return Agent.objects.create(
        owner=owner,
        workspace=workspace,
        name=name.strip() or slug,
        slug=slug,
        system_prompt=system_prompt.strip() or settings.DEFAULT_AGENT_SYSTEM_PROMPT,
        **params,
    )


def agent_get_or_create(
    *, owner: AbstractBaseUser, slug: str, workspace: Workspace | None = None
) -> tuple[Agent, bool]:
    """The agent with this slug, created with the default system prompt if missing."""
    workspace = workspace_for_write(user=owner, workspace=workspace)
    existing = Agent.objects.filter(workspace=workspace, slug=slugify(slug)).first()
    if existing:
        return existing, False
    return agent_create(owner=owner, workspace=workspace, name=slug, slug=slug), True


# Fields an update may change (the slug too; exports and the command line name agents by it).
UPDATABLE = (
    "name", "slug", "system_prompt", "model", "temperature", "top_p", "max_tokens", "frequency_penalty",
    "context_budget", "log_chats",
)


@transaction.atomic
def agent_update(*, actor: AbstractBaseUser, agent: Agent, **fields: Any) -> Agent:
    """Change some of an agent's settings (its creator or a workspace admin); each given field
    is checked like at creation."""
    require_change(user=actor, obj=agent)
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise ValidationError(f"Unknown agent setting(s): {', '.join(sorted(unknown))}.")
    if "slug" in fields:
        fields["slug"] = slugify(fields["slug"])[:100]
        if not fields["slug"]:
            raise ValidationError("A slug is made of letters, digits and hyphens.")
        taken = Agent.objects.filter(workspace_id=agent.workspace_id, slug=fields["slug"]).exclude(pk=agent.pk)
        if taken.exists():
            raise ValidationError(f"The workspace already has an agent called '{fields['slug']}'.")
    if "name" in fields:
        fields["name"] = fields["name"].strip()[:200]
        if not fields["name"]:
            raise ValidationError("An agent needs a name.", code="name")
    if "system_prompt" in fields:
        fields["system_prompt"] = fields["system_prompt"].strip()
        if not fields["system_prompt"]:
            raise ValidationError("The system prompt cannot be empty.", code="system_prompt")
    if "model" in fields and isinstance(fields["model"], str):
        fields["model"] = fields["model"].strip()
    for key, value in fields.items():
        setattr(agent, key, value)
    agent.save()
    return agent


@transaction.atomic
def agent_delete(*, actor: AbstractBaseUser, agent: Agent) -> None:
    require_change(user=actor, obj=agent, action="delete it")
    agent.delete()
