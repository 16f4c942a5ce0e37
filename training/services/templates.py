"""Prompt templates per workspace (overridable per agent and per job) and seed examples.

Stub: being built for #15.3. The job doors call these two functions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError

if TYPE_CHECKING:
    from agents.models import Agent
    from workspaces.models import Workspace

    from ..models import TrainingJob


def template_for_job(*, workspace: Workspace, name: str, agents: Sequence[Agent]) -> Any | None:
    """The template version a new job uses: `name` in `workspace` (ValidationError when there is
    none), else the job's agents' template, else the workspace default; None: the built-in prompt."""
    if name:
        raise ValidationError(f"There is no prompt template named {name!r} in this workspace.", code="template")
    return None


def seed_examples_for(job: TrainingJob) -> tuple[tuple[str, str, str], ...]:
    """Up to `job.seed_examples` approved completions of the job's agents, as (q, a, evidence)."""
    return ()
