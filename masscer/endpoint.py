"""The model endpoint as the settings describe it: its client configuration, its shared rate
limit and its shared limit on calls in flight (fixed, or learned from the provider's 429s).

Every caller of the model (pair generation, batches, the playground, retrieval's embeddings,
the workers' warm-up, `/readyz`) takes these from here, so they all count against the same
limits of the same endpoint; none of them reaches into another app for it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

from masscer.lib import concurrency, llm, ratelimit

logger = logging.getLogger(__name__)

# The learned limit's ceiling when MASSCER_LLM_MAX_CONCURRENCY does not set one.
ADAPTIVE_CEILING = 256


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
    """The endpoint's shared limit on calls in flight; None if there is none.

    MASSCER_LLM_MAX_CONCURRENCY fixes it; with MASSCER_LLM_ADAPTIVE_CONCURRENCY it is learned
    from the provider's 429s (`concurrency.Learning`) below that ceiling, or below
    ADAPTIVE_CEILING when no limit is set.
    """
    limit = settings.MASSCER_LLM_MAX_CONCURRENCY
    adaptive = settings.MASSCER_LLM_ADAPTIVE_CONCURRENCY
    if (limit <= 0 and not adaptive) or not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    return concurrency.slots_for(
        settings.MASSCER_RATELIMIT_REDIS_URL,
        base_url=settings.MASSCER_LLM_BASE_URL,
        model=model,
        limit=limit if limit > 0 else ADAPTIVE_CEILING,
        lease_seconds=settings.MASSCER_LLM_TIMEOUT + 30,
        start=float(settings.MASSCER_LLM_ADAPTIVE_START) if adaptive else None,
    )


def call_outcome(error: BaseException | None) -> concurrency.Outcome:
    """What a call that ended with `error` (None: a reply) tells a learned limit.

    Any 429 left transient is about calls at once or per minute (out of quota is a permanent
    error: fewer calls would not help); other errors, and a caller that gave up before
    calling (no rate-limit place in time), say nothing about the provider's limit.
    """
    if error is None:
        return concurrency.Outcome.OK
    if isinstance(error, llm.LLMTransientError) and error.status_code == 429:
        return concurrency.Outcome.OVERLOADED
    return concurrency.Outcome.NEUTRAL


@contextmanager
def call_slot_held(slots: concurrency.CallSlots | None, token: str | None) -> Iterator[None]:
    """Hold a taken call slot for the block's one model call, then give it back with the call's
    outcome (`call_outcome`: what moves a learned limit). Every door that holds a slot uses this."""
    if slots is None or token is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        slots.give(token, call_outcome(exc))
        raise
    slots.give(token, concurrency.Outcome.OK)


def learned_limits() -> dict[str, float] | None:
    """Each model's learned limit on calls in flight (MASSCER_LLM_ADAPTIVE_CONCURRENCY); None
    when no limit is learned or Redis cannot tell."""
    if not settings.MASSCER_LLM_ADAPTIVE_CONCURRENCY or not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    try:
        return concurrency.learned_limits(settings.MASSCER_RATELIMIT_REDIS_URL, base_url=settings.MASSCER_LLM_BASE_URL)
    except redis.RedisError as exc:
        logger.warning("could not read the learned model call limits: %s", exc)
        return None
