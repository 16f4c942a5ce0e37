"""Playground turns and generation calls share one rate limit (real Redis, database 13).

The limiter's key is the endpoint's (base URL + model); every test's fake model server has a
port of its own, so the tests neither see nor flush anybody else's keys.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import Agent
from masscer.endpoint import call_slots, model_limiter
from masscer.lib.ratelimit import RateLimiter
from masscer.tests.test_ratelimit import URL
from training.services import job_create
from training.tests.conftest import ready_document  # noqa: F401 (a fixture)
from training.tests.test_generation import run_job
from training.tests.test_worker_integration import require_redis

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared_limit(settings: Any, fake_llm: Any) -> Any:
    """The product's limiter on real Redis, as the llm workers and the web process build it."""
    require_redis()
    settings.MASSCER_RATELIMIT_REDIS_URL = URL
    settings.MASSCER_LLM_RPM = 6  # one call every 10 s
    settings.MASSCER_LLM_TPM = 0
    settings.MASSCER_PLAYGROUND_MAX_WAIT = 2.0
    settings.MASSCER_RATELIMIT_MAX_WAIT = 1.0
    return settings


def generation_limiter() -> RateLimiter:
    limiter = model_limiter("fake-model")  # what work_item_run takes its slots from
    assert limiter is not None
    return limiter


def turn(user: Any, agent: Agent, message: str = "Hi") -> list[tuple[str, Any]]:
    client = Client()
    client.force_login(user)
    url = reverse("agents:playground_stream", kwargs={"pk": agent.pk})
    response = client.post(url, data=json.dumps({"message": message}), content_type="application/json")
    assert response.status_code == 200, response.content
    found = []
    for block in b"".join(response.streaming_content).decode().split("\n\n"):
        if block:
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_a_turn_is_told_the_model_is_busy_while_generation_holds_the_budget(
    alice, agent, fake_llm, shared_limit
) -> None:
    limiter = generation_limiter()
    for _ in range(3):  # generation calls have taken the slots now, in 10 s and in 20 s
        assert limiter.acquire(max_wait=60).reserved
    name, data = turn(alice, agent)[-1]
    assert name == "error" and data["retry"] is True
    assert data["message"] == f"The model is busy, try again in {data['retry_after']:.0f} s."
    assert 29 <= data["retry_after"] <= 32  # 3 slots of 10 s (and the limiter's headroom)
    assert fake_llm.calls == []  # no call to the model
    # The refusal reserved nothing: the next caller still gets the slot 30 s away.
    assert limiter.acquire(max_wait=0).wait == pytest.approx(data["retry_after"], abs=1.5)


def test_a_short_wait_for_the_limit_is_waited_and_the_reply_streams(alice, agent, fake_llm, shared_limit) -> None:
    shared_limit.MASSCER_LLM_RPM = 60  # one call a second
    assert generation_limiter().acquire().wait == 0  # a generation call takes the current slot
    began = time.time()
    found = turn(alice, agent)
    assert found[-1][0] == "done" and any(name == "delta" for name, _ in found)
    [call] = fake_llm.calls
    assert call["started"] - began >= 0.9  # the turn waited for the next slot, a second later


def test_a_playground_turn_counts_against_the_generation_budget(
    alice,
    agent,
    ready_document,  # noqa: F811 (the imported fixture)
    fake_llm,
    shared_limit,
) -> None:
    assert turn(alice, agent)[-1][0] == "done"  # takes the current slot; the next is 10 s away
    job = job_create(owner=alice, count=2, agents=[agent], documents=[ready_document(alice, pages=1)])
    retries = run_job(job, rounds=1)
    # The generation worker found the line longer than it may wait (1 s) and handed its work back.
    assert len(retries) == 1 and "for the rate limit" in str(retries[0])
    assert retries[0].countdown == pytest.approx(10, abs=1.0)
    assert len(fake_llm.calls) == 1  # only the playground's


def test_a_429_in_the_playground_pauses_the_generation_workers(alice, agent, fake_llm, shared_limit) -> None:
    shared_limit.MASSCER_LLM_RPM = 6000
    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 3}])
    name, data = turn(alice, agent)[-1]
    assert name == "error" and "rate limited" in data["message"] and data["retry_after"] == 3
    assert generation_limiter().acquire(max_wait=0).wait > 2.5  # nobody calls before the pause ends


def test_a_turn_waits_for_a_call_slot_and_gives_it_back(alice, agent, fake_llm, shared_limit) -> None:
    """With MASSCER_LLM_MAX_CONCURRENCY, a turn holds one of the calls in flight the workers share."""
    shared_limit.MASSCER_LLM_RPM = 6000
    shared_limit.MASSCER_LLM_MAX_CONCURRENCY = 1
    shared_limit.MASSCER_PLAYGROUND_MAX_WAIT = 0.5
    slots = call_slots("fake-model")  # what work_item_run holds during its call
    assert slots is not None
    held = slots.take(max_wait=0)  # a generation call is in flight: no slot is left
    name, data = turn(alice, agent)[-1]
    assert name == "error" and data["retry"] is True and "are in use" in data["message"]
    assert fake_llm.calls == []  # no call beyond the provider's limit
    slots.give(held)
    assert turn(alice, agent)[-1][0] == "done" and len(fake_llm.calls) == 1
    assert slots.held() == 0  # the turn gave its slot back
