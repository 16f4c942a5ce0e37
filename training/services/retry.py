"""When to ask the model again, and when to give up: shared by live and batch generation."""
from __future__ import annotations

import random
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from masscer.lib import llm


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before the next try (the provider's Retry-After when it gave one)."""
    if retry_after is not None:
        return max(0.5, retry_after)
    # Exponential with full jitter, so many workers do not retry in lockstep.
    ceiling = min(settings.MASSCER_RETRY_BACKOFF_MAX, 2.0 ** min(attempt, 10))
    return random.uniform(ceiling / 2, ceiling)


def unreachable(since: datetime | None, exc: llm.LLMError) -> str | None:
    """The failure once the model has been unreachable for too long (since `since`), else None."""
    waited = (timezone.now() - since).total_seconds() if since is not None else 0.0
    if waited < settings.MASSCER_MODEL_UNREACHABLE_SECONDS:
        return None
    minutes = settings.MASSCER_MODEL_UNREACHABLE_SECONDS / 60
    return f"Model unreachable for {minutes:g} minutes: {exc}"
