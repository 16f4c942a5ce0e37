"""Writes behind the agent dashboard: the edit form's update and moving material between agents."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from training.services import completions_assign, completions_unassign

from . import services
from .models import Agent

EDITABLE = ("model", "temperature", "top_p", "max_tokens", "frequency_penalty")
BATCH = 500


@transaction.atomic
def agent_update(*, agent: Agent, name: str, system_prompt: str, **params: Any) -> Agent:
    """The edit form's update: an empty system prompt falls back to the default one."""
    unknown = set(params) - set(EDITABLE)
    if unknown:
        raise ValidationError(f"Unknown agent setting(s): {', '.join(sorted(unknown))}.")
    prompt = system_prompt.strip() or settings.DEFAULT_AGENT_SYSTEM_PROMPT
    return services.agent_update(agent=agent, name=name, system_prompt=prompt, **params)


def _batches(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[start : start + BATCH] for start in range(0, len(ids), BATCH)]


@transaction.atomic
def material_move(*, completion_ids: Sequence[int], source: Agent, target: Agent) -> int:
    """Attach completions to `target` and detach them from `source`; returns how many moved."""
    if source.workspace_id != target.workspace_id:
        raise ValidationError("Material moves only between agents of the same workspace.")
    moved = 0
    for batch in _batches(list(completion_ids)):
        completions_assign(completion_ids=batch, agent=target)
        moved += completions_unassign(completion_ids=batch, agent=source)
    return moved


def material_assign(*, completion_ids: Sequence[int], agent: Agent) -> int:
    return sum(completions_assign(completion_ids=batch, agent=agent) for batch in _batches(list(completion_ids)))


def material_unassign(*, completion_ids: Sequence[int], agent: Agent) -> int:
    return sum(completions_unassign(completion_ids=batch, agent=agent) for batch in _batches(list(completion_ids)))
