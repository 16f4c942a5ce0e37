"""Writes behind the agent dashboard's edit form (material moves are `training.review`'s)."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from . import services
from .models import Agent

EDITABLE = ("model", "temperature", "top_p", "max_tokens", "frequency_penalty", "context_budget", "log_chats")


@transaction.atomic
def agent_update(*, actor: AbstractBaseUser, agent: Agent, name: str, system_prompt: str, **params: Any) -> Agent:
    """The edit form's update: an empty system prompt falls back to the default one."""
    unknown = set(params) - set(EDITABLE)
    if unknown:
        raise ValidationError(f"Unknown agent setting(s): {', '.join(sorted(unknown))}.")
    prompt = system_prompt.strip() or settings.DEFAULT_AGENT_SYSTEM_PROMPT
    return services.agent_update(actor=actor, agent=agent, name=name, system_prompt=prompt, **params)
