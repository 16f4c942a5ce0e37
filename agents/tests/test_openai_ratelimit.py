"""/v1 calls take their place in the shared rate limit and call slots (real Redis, database 13),
and a refusal is a 429 with Retry-After, as OpenAI clients expect."""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from agents.models import Agent
from agents.tests.test_playground_ratelimit import generation_limiter
from masscer.endpoint import call_slots
from masscer.tests.test_ratelimit import URL
from training.tests.test_worker_integration import require_redis
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared_limit(settings: Any, fake_llm: Any) -> Any:
    """The product's limiter on real Redis, as the llm workers and the web process build it."""
    require_redis()
    settings.MASSCER_RATELIMIT_REDIS_URL = URL
    settings.MASSCER_LLM_RPM = 6  # one call every 10 s
    settings.MASSCER_LLM_TPM = 0
    settings.MASSCER_PLAYGROUND_MAX_WAIT = 2.0
    return settings


def chat(user: Any, agent: Agent, *, stream: bool = False) -> Any:
    key = api_token_create(user=user, name="sdk")[1]
    body = {"model": agent.slug, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
    return Client().post(
        "/v1/chat/completions", data=json.dumps(body), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_a_chat_is_refused_with_429_while_generation_holds_the_budget(alice, agent, fake_llm, shared_limit) -> None:
    limiter = generation_limiter()
    for _ in range(3):  # generation calls have taken the slots now, in 10 s and in 20 s
        assert limiter.acquire(max_wait=60).reserved
    for stream in (False, True):
        response = chat(alice, agent, stream=stream)
        assert response.status_code == 429
        assert 29 <= int(response["Retry-After"]) <= 32
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert fake_llm.calls == []


def test_a_chat_counts_against_the_generation_budget(alice, agent, fake_llm, shared_limit) -> None:
    shared_limit.MASSCER_LLM_RPM = 60  # one call a second
    assert chat(alice, agent).status_code == 200
    assert generation_limiter().acquire(max_wait=0).wait > 0.5  # the chat took the current slot


def test_a_chat_holds_a_call_slot_and_gives_it_back(alice, agent, fake_llm, shared_limit) -> None:
    shared_limit.MASSCER_LLM_RPM = 6000
    shared_limit.MASSCER_LLM_MAX_CONCURRENCY = 1
    shared_limit.MASSCER_PLAYGROUND_MAX_WAIT = 0.5
    slots = call_slots("fake-model")
    assert slots is not None
    held = slots.take(max_wait=0)  # a generation call is in flight: no slot is left
    response = chat(alice, agent)
    assert response.status_code == 429 and response["Retry-After"] == "3"
    assert fake_llm.calls == []
    slots.give(held)
    response = chat(alice, agent, stream=True)
    assert response.status_code == 200
    assert b"".join(response.streaming_content).endswith(b"data: [DONE]\n\n")
    assert slots.held() == 0 and len(fake_llm.calls) == 1
