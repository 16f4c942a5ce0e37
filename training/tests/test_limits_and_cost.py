"""Shared rate limits, cost accounting and the per-job budget."""
from __future__ import annotations

from decimal import Decimal

import pytest
import redis

from training.models import TrainingJob
from training.services import job_create

from .test_generation import run_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def limited(settings, fake_llm):
    """Point the limiter at a Redis database of its own (the worker tests' rules for Redis apply)."""
    from masscer.tests.test_ratelimit import URL

    from .test_worker_integration import require_redis

    require_redis()
    redis.Redis.from_url(URL).flushdb()
    settings.MASSCER_RATELIMIT_REDIS_URL = URL
    return settings


def test_calls_are_spaced_by_the_shared_request_limit(alice, agent, ready_document, fake_llm, limited) -> None:
    limited.MASSCER_LLM_RPM = 120
    limited.MASSCER_PAIRS_PER_CALL = 1
    job = job_create(owner=alice, count=4, agents=[agent], documents=[ready_document(alice, pages=1)])
    run_job(job)
    starts = sorted(call["started"] for call in fake_llm.calls)
    assert len(starts) == 4
    # Slots are 0.5 s apart; the first request's connection set-up may eat into the first gap.
    assert starts[-1] - starts[0] >= 3 * 0.5 - 0.2


def test_a_429_retry_after_pauses_the_endpoint_for_every_worker(
    alice, agent, ready_document, fake_llm, limited
) -> None:
    from masscer.lib.ratelimit import Limits, endpoint_key, limiter_for

    limited.MASSCER_LLM_RPM = 6000
    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 2}])
    job = job_create(owner=alice, count=2, agents=[agent], documents=[ready_document(alice, pages=1)])
    retries = run_job(job, rounds=1)
    assert [r.countdown for r in retries] == [2.0]
    limiter = limiter_for(limited.MASSCER_RATELIMIT_REDIS_URL, base_url=fake_llm.base_url, model="fake-model",
                          limits=Limits(6000, 0))
    assert endpoint_key(fake_llm.base_url, "fake-model")
    assert limiter.acquire(max_wait=0).wait > 1.5  # nobody calls before the provider's pause ends


def test_cost_is_recorded_from_usage_and_prices(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:2000"
    job = job_create(owner=alice, count=3, agents=[agent], documents=[ready_document(alice, pages=1)])
    run_job(job)
    expected = (Decimal(1000) * job.prompt_tokens + Decimal(2000) * job.completion_tokens) / 1_000_000
    assert job.cost == pytest.approx(expected)
    assert job.cost > 0


def test_a_budget_stops_the_job_cleanly_with_the_reason(alice, agent, ready_document, fake_llm, settings) -> None:
    settings.MASSCER_LLM_PRICES = "fake-model=1000:2000"
    settings.MASSCER_PAIRS_PER_CALL = 2
    job = job_create(
        owner=alice, count=10, agents=[agent], documents=[ready_document(alice, pages=1)], budget=Decimal("0.000001")
    )
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.calls == 1 and job.created_count == 2
    assert job.shortfall == 8 and job.shortfall_reasons["budget_exhausted"] == 1
    assert "cost budget" in job.error



def test_with_every_call_slot_taken_the_work_is_handed_back_without_calling(
    alice, agent, ready_document, fake_llm, limited
) -> None:
    from masscer.endpoint import call_slots
    from training.models import WorkItem

    limited.MASSCER_LLM_MAX_CONCURRENCY = 1
    limited.MASSCER_RATELIMIT_MAX_WAIT = 0.2
    shared = call_slots("fake-model")
    assert shared is not None
    token = shared.take(max_wait=1)  # another worker's call in flight
    job = job_create(owner=alice, count=2, agents=[agent], documents=[ready_document(alice, pages=1)])
    retries = run_job(job, rounds=1)
    assert len(retries) == 1 and "call slots" in str(retries[0])
    assert fake_llm.calls == []
    assert WorkItem.objects.get(job=job).status == WorkItem.Status.PENDING
    shared.give(token)
    run_job(job)
    assert job.status == TrainingJob.Status.COMPLETED and job.created_count == 2
    assert shared.held() == 0
