"""A conversation that grows after it was trained (a logged chat, an added message) is split
again when it is trained again: the new turns are not left out, and earlier chunks stay for
the completions made from them."""
from __future__ import annotations

import pytest

from conversations.services import conversation_create, message_add
from training.models import Chunk
from training.selectors import chunks_for_conversation
from training.services import chunks_ensure_for_conversation

pytestmark = pytest.mark.django_db


def test_new_messages_make_a_new_split_and_the_old_chunks_stay(alice) -> None:
    chat = [{"role": "user", "content": "Can I get a refund?"}, {"role": "assistant", "content": "Within 14 days."}]
    conversation = conversation_create(owner=alice, title="Refunds", messages=chat)
    first = chunks_ensure_for_conversation(conversation=conversation)
    assert chunks_ensure_for_conversation(conversation=conversation) == first  # split once per version
    assert "shipping" not in " ".join(c.text for c in first)

    message_add(actor=alice, conversation=conversation, role="user", content="And is shipping free?")
    message_add(actor=alice, conversation=conversation, role="assistant", content="Yes, over 50 euros.")
    conversation.refresh_from_db()
    again = chunks_ensure_for_conversation(conversation=conversation)
    assert "shipping" in " ".join(c.text for c in again)
    assert {c.pk for c in again}.isdisjoint({c.pk for c in first})
    assert Chunk.objects.filter(pk__in=[c.pk for c in first]).count() == len(first)  # kept
    assert list(chunks_for_conversation(conversation=conversation)) == again
