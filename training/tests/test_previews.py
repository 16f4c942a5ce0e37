"""A big conversation not trained yet is split once, not on every preview, dialog or estimate."""
from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache

from conversations.chunking import conversation_chunk_specs
from conversations.services import conversation_create, message_add
from masscer.tests.web import fast_passwords  # noqa: F401 - autouse fixture
from training import previews

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def small_chunks(settings: Any) -> None:
    cache.clear()
    settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP = 64, 8


def chat(owner: Any, turns: int = 120) -> Any:
    messages = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: how do refunds work for plan {turn}?"})
        messages.append({"role": "assistant", "content": f"Answer {turn}: refunds for plan {turn} take five days."})
    return conversation_create(owner=owner, title="Support chat", messages=messages)


@pytest.fixture
def split() -> Any:
    with mock.patch.object(previews, "conversation_chunk_specs", wraps=conversation_chunk_specs) as spy:
        yield spy


def test_preview_dialog_and_estimate_split_the_conversation_once(client, alice, split) -> None:
    conversation = chat(alice)
    client.force_login(alice)
    urls = [
        f"/jobs/chunks/conversation/{conversation.pk}/",
        f"/jobs/chunks/conversation/{conversation.pk}/?page=2",
        f"/jobs/new/?conversation={conversation.pk}",
        f"/jobs/estimate/?conversation={conversation.pk}&count=10&style=mine",
        f"/jobs/estimate/?conversation={conversation.pk}&count=10&style=mine",
    ]
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert split.call_count == 1


def test_a_new_message_is_in_the_next_estimate(client, alice, split) -> None:
    conversation = chat(alice, turns=3)
    client.force_login(alice)
    url = f"/jobs/chunks/conversation/{conversation.pk}/"
    client.get(url)
    message_add(actor=alice, conversation=conversation, role="user", content="A brand new question about invoices?")
    body = client.get(url).content.decode()
    assert split.call_count == 2
    assert "A brand new question about invoices?" in body


def test_the_preview_pages_through_every_chunk_once(client, alice) -> None:
    conversation = chat(alice)
    expected = conversation_chunk_specs(conversation, budget=64, overlap=8)
    assert len(expected) > previews.PER_PAGE  # more than one page
    client.force_login(alice)
    seen = []
    for number in range(1, -(-len(expected) // previews.PER_PAGE) + 1):
        response = client.get(f"/jobs/chunks/conversation/{conversation.pk}/?page={number}")
        seen += list(response.context["preview"])
    assert seen == expected
    assert "Page 1 of" in client.get(f"/jobs/chunks/conversation/{conversation.pk}/").content.decode()


def test_the_estimate_matches_a_fresh_split(alice) -> None:
    conversation = chat(alice)
    expected = conversation_chunk_specs(conversation, budget=64, overlap=8)
    shapes = previews.conversation_shape(conversation)
    assert [s.tokens for s in shapes] == [spec.token_count for spec in expected]
    assert sum(s.users for s in shapes) >= 120


def test_texts_that_fell_out_of_the_cache_are_split_again(alice) -> None:
    conversation = chat(alice)
    previews.conversation_shape(conversation)
    cache.delete_many([key for key in list(cache._cache) if "book-" in key])  # type: ignore[attr-defined]
    page = previews.conversation_preview(conversation, 2)
    expected = conversation_chunk_specs(conversation, budget=64, overlap=8)
    assert list(page) == expected[previews.PER_PAGE : 2 * previews.PER_PAGE]


def test_pages_past_the_first_book_come_from_their_own_key(alice, monkeypatch) -> None:
    monkeypatch.setattr(previews, "BOOK", 2 * previews.PER_PAGE)
    conversation = chat(alice)
    expected = conversation_chunk_specs(conversation, budget=64, overlap=8)
    previews.conversation_shape(conversation)
    with mock.patch.object(previews, "conversation_chunk_specs") as split:
        page = previews.conversation_preview(conversation, 3)
    assert not split.called
    assert list(page) == expected[2 * previews.PER_PAGE : 3 * previews.PER_PAGE]
