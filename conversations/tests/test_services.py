from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from conversations.importers import human_size
from conversations.models import Conversation, Message
from conversations.selectors import conversation_messages, conversations_for
from conversations.services import (
    conversation_create,
    conversation_delete,
    conversation_update,
    conversations_import,
    message_add,
)
from testing.members import add_member

from .conftest import as_json, sample

pytestmark = pytest.mark.django_db


def stored(conversation_id: int) -> list[tuple[int, str, str]]:
    return list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("position")
        .values_list("position", "role", "content")
    )


# --------------------------------------------------------------------------- importing the samples


def test_it_imports_the_openai_sample_for_alice(alice: AbstractBaseUser) -> None:
    report = conversations_import(owner=alice, data=sample("openai-messages.jsonl"), filename="openai-messages.jsonl")

    assert report.format == "openai"
    assert report.problems == []
    assert [(i.title, i.message_count) for i in report.imported] == [
        ("Warranty on a cracked frame", 7),
        ("Tubeless setup", 4),
    ]
    warranty = Conversation.objects.get(pk=report.imported[0].id)
    assert (warranty.owner, warranty.source_format, warranty.external_id) == (alice, "openai", "line 1")
    assert warranty.imported_at is not None
    rows = stored(warranty.pk)
    assert [(p, r) for p, r, _ in rows] == [
        (0, "system"), (1, "user"), (2, "assistant"), (3, "tool"), (4, "assistant"), (5, "user"), (6, "assistant")
    ]


def test_tool_calls_and_tool_results_survive_the_import(alice: AbstractBaseUser) -> None:
    report = conversations_import(owner=alice, data=sample("openai-messages.jsonl"), filename="openai-messages.jsonl")

    rows = Message.objects.filter(conversation_id=report.imported[0].id, position__in=[2, 3])
    call, result = rows.order_by("position")
    assert call.tool_calls[0]["function"] == {"name": "lookup_policy", "arguments": '{"topic": "frame warranty"}'}
    assert call.tool_calls[0]["id"] == "call_1"
    assert (result.role, result.tool_call_id, result.name) == ("tool", "call_1", "lookup_policy")
    assert "5-year warranty" in result.content


def test_it_imports_the_sharegpt_sample(alice: AbstractBaseUser) -> None:
    report = conversations_import(owner=alice, data=sample("sharegpt.json"), filename="sharegpt.json")

    assert [(i.message_count) for i in report.imported] == [5, 2]
    plans = stored(report.imported[0].id)
    assert [r for _, r, _ in plans] == ["system", "user", "assistant", "user", "assistant"]
    assert plans[1][2] == "What does the Gold service plan include?"
    batteries = Conversation.objects.get(pk=report.imported[1].id)
    assert batteries.external_id == "sg-2"
    assert [r for _, r, _ in stored(batteries.pk)] == ["user", "assistant"]


def test_it_imports_the_chatgpt_sample_without_the_abandoned_branch(alice: AbstractBaseUser) -> None:
    report = conversations_import(owner=alice, data=sample("chatgpt-export.json"), filename="conversations.json")

    [item] = report.imported
    assert (item.title, item.message_count) == ("Derailleur adjustment", 4)
    rows = stored(item.id)
    assert [r for _, r, _ in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[2][2] == "What does the B-tension screw do?"
    assert not Message.objects.filter(content__contains="draft that was edited").exists()


# --------------------------------------------------------------------------- bad input leaves nothing behind


def test_a_truncated_file_is_refused_and_stores_nothing(alice: AbstractBaseUser) -> None:
    with pytest.raises(ValidationError) as caught:
        conversations_import(owner=alice, data=sample("chatgpt-export.json")[:1000], filename="conversations.json")

    assert caught.value.messages[0].startswith("invalid JSON at line")
    assert not Conversation.objects.exists()


def test_an_over_limit_file_is_refused_and_stores_nothing(alice: AbstractBaseUser) -> None:
    with pytest.raises(ValidationError, match="the limit is 100 bytes"):
        conversations_import(owner=alice, data=sample("sharegpt.json"), filename="sharegpt.json", max_bytes=100)

    assert not Conversation.objects.exists()


def test_a_real_file_over_the_default_limit_is_refused(alice: AbstractBaseUser, tmp_path: Path) -> None:
    line = sample("openai-messages.jsonl").splitlines()[0] + b"\n"
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        for _ in range(52 * 1024 * 1024 // len(line) + 1):
            handle.write(line)
    size = path.stat().st_size
    assert size > 52 * 1024 * 1024

    with pytest.raises(ValidationError) as caught:
        conversations_import(owner=alice, data=path.read_bytes(), filename=path.name)

    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    assert caught.value.messages == [f"The file is {human_size(size)}; the limit is {human_size(limit)}."]
    assert not Conversation.objects.exists()


def test_problem_conversations_are_reported_and_the_others_kept(alice: AbstractBaseUser) -> None:
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    lonely = {"messages": [{"role": "assistant", "content": "Anyone there?"}]}
    odd = {"messages": [{"role": "user", "content": "Hi"}, {"role": "narrator", "content": "Meanwhile"}]}
    data = b"\n".join([as_json(good), as_json(lonely), b'{"messages": [', as_json(odd), as_json(good)])

    report = conversations_import(owner=alice, data=data, filename="chats.jsonl")

    assert [i.message_count for i in report.imported] == [2, 2]
    assert [p.index_or_id for p in report.problems] == ["line 2", "line 3", "line 4"]
    assert report.problems[0].reason == "no user turn"
    assert "unknown role 'narrator'" in report.problems[2].reason
    assert Conversation.objects.count() == 2
    assert Message.objects.count() == 4


def test_a_conversation_that_fails_to_save_leaves_no_partial_rows(
    alice: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bulk_create = Message.objects.bulk_create

    def failing_bulk_create(rows: list[Message], **kwargs: Any) -> list[Message]:
        if any("BOOM" in row.content for row in rows):
            raise IntegrityError("disk on fire")
        return real_bulk_create(rows, **kwargs)

    monkeypatch.setattr(Message.objects, "bulk_create", failing_bulk_create)
    chats = [
        {"id": "first", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"id": "broken", "messages": [{"role": "user", "content": "BOOM"}, {"role": "assistant", "content": "?"}]},
        {"id": "third", "messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]},
    ]

    report = conversations_import(owner=alice, data=as_json(chats), filename="chats.json")

    assert [p.index_or_id for p in report.problems] == ["broken"]
    assert "could not be saved" in report.problems[0].reason
    assert sorted(Conversation.objects.values_list("external_id", flat=True)) == ["first", "third"]
    assert Message.objects.count() == 4


def test_a_message_the_service_rejects_makes_its_conversation_a_problem(alice: AbstractBaseUser) -> None:
    bad = {"id": "bad", "messages": [{"role": "user", "content": "Hi", "tool_calls": [{"id": "x"}]}]}
    good = {"id": "good", "messages": [{"role": "user", "content": "Hi"}]}

    report = conversations_import(owner=alice, data=as_json([bad, good]), filename="chats.json")

    assert [(p.index_or_id, p.reason) for p in report.problems] == [
        ("bad", "message 1: only assistant messages make tool calls.")
    ]
    assert list(Conversation.objects.values_list("external_id", flat=True)) == ["good"]


# --------------------------------------------------------------------------- typed-in conversations


def test_it_creates_a_conversation_with_dict_messages(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(
        owner=alice,
        title="Saddle height",
        messages=[
            {"role": "user", "content": "How high should my saddle be?"},
            {"role": "assistant", "content": "Leg almost straight at the bottom of the stroke."},
        ],
    )

    assert conversation.source_format == "manual"
    assert [(p, r) for p, r, _ in stored(conversation.pk)] == [(0, "user"), (1, "assistant")]


def test_an_unknown_role_is_a_clear_error_and_creates_nothing(alice: AbstractBaseUser) -> None:
    with pytest.raises(ValidationError) as caught:
        conversation_create(owner=alice, messages=[{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}])

    assert caught.value.messages == [
        "message 2: unknown role 'bot'; a message's role is one of system, user, assistant, tool."
    ]
    assert not Conversation.objects.exists()


def test_message_add_appends_at_the_end(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(owner=alice, messages=[{"role": "user", "content": "Hi"}])

    added = message_add(actor=alice, conversation=conversation, role="assistant", content="Hello, how can I help?")
    call = message_add(
        actor=alice,
        conversation=conversation,
        role="assistant",
        content="",
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    )

    assert (added.position, call.position) == (1, 2)
    assert list(conversation_messages(conversation=conversation).values_list("position", flat=True)) == [0, 1, 2]


def test_message_add_refuses_an_unknown_role_and_an_empty_message(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(owner=alice)

    with pytest.raises(ValidationError, match="unknown role 'robot'"):
        message_add(actor=alice, conversation=conversation, role="robot", content="beep")
    with pytest.raises(ValidationError, match="a message needs text"):
        message_add(actor=alice, conversation=conversation, role="user", content="  ")
    assert not Message.objects.exists()


def test_conversation_update_changes_only_what_is_given(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(owner=alice, title="Old", tags=["brakes"])

    conversation_update(actor=alice, conversation=conversation, title="  New  ")
    conversation.refresh_from_db()
    assert (conversation.title, conversation.tags) == ("New", ["brakes"])

    conversation_update(actor=alice, conversation=conversation, tags=["gears", " gears ", "wheels"])
    conversation.refresh_from_db()
    assert (conversation.title, conversation.tags) == ("New", ["gears", "wheels"])


def test_conversation_delete_removes_its_messages(alice: AbstractBaseUser) -> None:
    conversation = conversation_create(owner=alice, messages=[{"role": "user", "content": "Hi"}])

    conversation_delete(actor=alice, conversation=conversation)

    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


# --------------------------------------------------------------------------- selectors


def test_it_shows_alices_conversations_to_her_teammate_bob_but_not_to_charlie(
    alice: AbstractBaseUser, bob: AbstractBaseUser, charlie: AbstractBaseUser
) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    mine = conversation_create(owner=alice, messages=messages)
    conversation_create(owner=charlie, messages=[{"role": "user", "content": "Hey"}])
    add_member(actor=alice, workspace=mine.workspace, user=bob)

    assert [(c.pk, c.message_count) for c in conversations_for(user=alice)] == [(mine.pk, 2)]
    assert [c.pk for c in conversations_for(user=bob)] == [mine.pk]
    assert all(c.owner_id == charlie.pk for c in conversations_for(user=charlie))


def test_report_as_dict_is_json_ready(alice: AbstractBaseUser) -> None:
    report = conversations_import(owner=alice, data=sample("sharegpt.json"), filename="sharegpt.json")

    payload = json.loads(json.dumps(report.as_dict()))

    assert payload["format"] == "sharegpt"
    assert [item["message_count"] for item in payload["imported"]] == [5, 2]
    assert payload["problems"] == [] and payload["skipped_parts"] == 0
