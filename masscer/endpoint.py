"""The model endpoint as the settings describe it: its client configuration, its shared rate
limit and its shared limit on calls in flight.

Every caller of the model (pair generation, batches, the playground, retrieval's embeddings,
the workers' warm-up, `/readyz`) takes these from here, so they all count against the same
limits of the same endpoint; none of them reaches into another app for it.
"""
from __future__ import annotations

from django.conf import settings

from masscer.lib import concurrency, llm, ratelimit


def llm_config() -> llm.LLMConfig:
    return llm.LLMConfig(
        base_url=settings.MASSCER_LLM_BASE_URL,
        api_key=settings.MASSCER_LLM_API_KEY,
        model=settings.MASSCER_LLM_MODEL,
        mode=settings.MASSCER_LLM_MODE,
        timeout=settings.MASSCER_LLM_TIMEOUT,
        schema_counts=settings.MASSCER_LLM_SCHEMA_COUNTS,
    )


def model_limiter(model: str) -> ratelimit.RateLimiter | None:
    """The shared rate limit of the endpoint and `model` for every caller; None without Redis."""
    limits = ratelimit.Limits(settings.MASSCER_LLM_RPM, settings.MASSCER_LLM_TPM)
    if not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    return ratelimit.limiter_for(
        settings.MASSCER_RATELIMIT_REDIS_URL, base_url=settings.MASSCER_LLM_BASE_URL, model=model, limits=limits
    )


def call_slots(model: str) -> concurrency.CallSlots | None:
    """The endpoint's shared limit on calls in flight (MASSCER_LLM_MAX_CONCURRENCY); None if unset."""
    limit = settings.MASSCER_LLM_MAX_CONCURRENCY
    if limit <= 0 or not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    return concurrency.slots_for(
        settings.MASSCER_RATELIMIT_REDIS_URL,
        base_url=settings.MASSCER_LLM_BASE_URL,
        model=model,
        limit=limit,
        lease_seconds=settings.MASSCER_LLM_TIMEOUT + 30,
    )
