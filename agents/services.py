"""Writes of agents."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from workspaces.models import Workspace
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
