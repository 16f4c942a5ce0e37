"""The API reads a big conversation a page at a time."""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from conversations.api import FIRST_MESSAGES
from conversations.models import Message
from conversations.services import conversation_create
from workspaces.services import api_token_create

pytestmark = pytest.mark.django_db


def get(user: Any, url: str) -> Any:
    token = api_token_create(user=user, name="script")[1]
    return Client().get(url, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def big(alice: Any) -> Any:
    conversation = conversation_create(owner=alice, messages=[{"role": "system", "content": "Be kind."}])
    Message.objects.bulk_create(
        Message(conversation=conversation, position=i, role="user" if i % 2 else "assistant", content=f"m{i} " * 50)
        for i in range(1, 1234)
    )
    return conversation


def test_reading_a_big_conversation_is_bounded(alice, big) -> None:
    response = get(alice, f"/api/conversations/{big.pk}")
    body = response.json()
    assert response.status_code == 200 and len(response.content) < 100_000
    assert body["message_count"] == 1234 and len(body["messages"]) == FIRST_MESSAGES
    assert body["messages_next_offset"] == FIRST_MESSAGES
    assert [m["position"] for m in body["messages"]] == list(range(FIRST_MESSAGES))


def test_paging_reads_every_message_exactly_once(alice, big) -> None:
    positions: list[int] = []
    offset = 0
    while True:
        page = get(alice, f"/api/conversations/{big.pk}/messages?offset={offset}&limit=500").json()
        assert page["count"] == 1234
        positions += [m["position"] for m in page["items"]]
        offset += 500
        if offset >= page["count"]:
            break
    assert positions == list(range(1234))


def test_a_page_is_at_most_500_messages(alice, big) -> None:
    assert get(alice, f"/api/conversations/{big.pk}/messages?limit=501").status_code in (400, 422)
    assert len(get(alice, f"/api/conversations/{big.pk}/messages").json()["items"]) == 50


def test_a_small_conversation_still_comes_whole(alice) -> None:
    small = conversation_create(owner=alice, messages=[{"role": "user", "content": "Hi?"}])
    body = get(alice, f"/api/conversations/{small.pk}").json()
    assert [m["content"] for m in body["messages"]] == ["Hi?"] and body["messages_next_offset"] is None


def test_charlie_cannot_page_through_alices_messages(alice, charlie, big) -> None:
    response = get(charlie, f"/api/conversations/{big.pk}/messages")
    assert response.status_code == 404 and "items" not in json.loads(response.content)
