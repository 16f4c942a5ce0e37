"""Writes of agents."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from .models import Agent


@transaction.atomic
def agent_create(*, owner: AbstractBaseUser, name: str, slug: str = "", system_prompt: str = "", **params: Any) -> Agent:
    slug = slugify(slug or name)[:100]
    if not slug:
        raise ValidationError("An agent needs a name made of letters or digits.")
    if Agent.objects.filter(owner=owner, slug=slug).exists():
        raise ValidationError(f"You already have an agent called '{slug}'.")
    return Agent.objects.create(
        owner=owner,
        name=name.strip() or slug,
        slug=slug,
        system_prompt=system_prompt.strip() or settings.DEFAULT_AGENT_SYSTEM_PROMPT,
        **params,
    )


def agent_get_or_create(*, owner: AbstractBaseUser, slug: str) -> tuple[Agent, bool]:
    """The agent with this slug, created with the default system prompt if missing."""
    existing = Agent.objects.filter(owner=owner, slug=slugify(slug)).first()
    if existing:
        return existing, False
    return agent_create(owner=owner, name=slug, slug=slug), True
