"""Multi-turn export of reviewed conversations: OpenAI chat JSONL with tool calls, tool results and
`weight`, and ShareGPT; every line passes OpenAI's format check and a tool call survives the trip
out and back in through our own importer."""
from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from conversations.models import Conversation, Message
from conversations.services import conversation_create, conversations_import
from testing.members import add_member
from training.export import export_file
from training.openai_check import openai_problems
from workspaces.services import workspace_personal

pytestmark = pytest.mark.django_db

CALL = {"id": "call_weather_1", "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Lyon", "unit": "c"})}}
WEATHER_CHAT = {
    "title": "Weather in Lyon",
    "messages": [
        {"role": "system", "content": "You answer with the weather tool."},
        {"role": "user", "content": "What's the weather in Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_weather_1", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "21 °C and clear in Lyon."},
        {"role": "user", "content": "Thanks! Umbrella?"},
        {"role": "assistant", "content": "No need today."},
    ],
}


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def imported(owner: Any, record: dict[str, Any]) -> Conversation:
    report = conversations_import(owner=owner, data=json.dumps(record).encode(), filename="chat.jsonl", fmt="openai")
    [item] = report.imported
    return Conversation.objects.get(pk=item.id)


def shape(conversation: Conversation) -> list[tuple[Any, ...]]:
    """What a conversation says, turn by turn (what a round trip must keep)."""
    return [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in conversation.messages.order_by("position")]


def exported(client: Client, **query: Any) -> tuple[Any, str]:
    response = client.get("/api/conversations/export", query)
    assert response.status_code == 200, response.content[:300]
    return response, b"".join(response.streaming_content).decode()


def test_a_reviewed_conversation_with_a_tool_call_round_trips_through_openai_jsonl(alice) -> None:
    weather = imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    assert client.post(f"/conversations/{weather.pk}/review/", {"reviewed": "1"}).status_code == 302
    response, body = exported(client, format="openai-multiturn")
    assert response["Content-Disposition"] == 'attachment; filename="conversations-openai-multiturn-reviewed.jsonl"'
    [line] = body.splitlines()
    example = json.loads(line)
    assert openai_problems(example) == []
    call, result = example["messages"][2], example["messages"][3]
    assert call == {"role": "assistant", "tool_calls": [CALL], "weight": 1}
    assert result == {"role": "tool", "content": '{"temp": 21, "sky": "clear"}', "tool_call_id": "call_weather_1"}
    again = imported(alice, {"title": "again", **example})
    assert shape(again) == shape(weather)


def test_only_reviewed_conversations_are_exported_unless_all_are_asked_for(alice) -> None:
    imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    assert exported(client)[1] == ""
    assert len(exported(client, reviewed="all")[1].splitlines()) == 1
    report = client.get("/api/conversations/export/report", {"reviewed": "all"}).json()
    assert report["written"] == {"train": 1} and report["skipped_total"] == 0


def test_turns_marked_context_only_and_edited_turns_are_exported_as_reviewed(alice) -> None:
    weather = imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    client.post(f"/conversations/{weather.pk}/turn/", {"position": 4, "weight": "0"})
    client.post(f"/conversations/{weather.pk}/turn/", {"position": 6, "content": "No: it stays dry all day."})
    client.post(f"/conversations/{weather.pk}/review/")
    page = client.get(f"/conversations/{weather.pk}/").content.decode()
    assert 'data-weight="0"' in page and "Before editing: No need today." in page and "data-reviewed" in page
    example = json.loads(exported(client)[1])
    assistants = [m for m in example["messages"] if m["role"] == "assistant"]
    assert [m["weight"] for m in assistants] == [1, 0, 1]
    assert assistants[-1]["content"] == "No: it stays dry all day."
    assert openai_problems(example) == []


def test_sharegpt_multiturn_keeps_tool_calls_and_our_importer_reads_them_back(alice) -> None:
    weather = imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    client.post(f"/conversations/{weather.pk}/review/")
    response, body = exported(client, format="sharegpt-multiturn")
    assert response["Content-Type"] == "application/json; charset=utf-8"
    [element] = json.loads(body)
    assert element["system"] == "You answer with the weather tool."
    assert [turn["from"] for turn in element["conversations"]] == [
        "human", "function_call", "observation", "gpt", "human", "gpt",
    ]
    assert json.loads(element["conversations"][1]["value"]) == {"name": "get_weather",
                                                               "arguments": {"city": "Lyon", "unit": "c"}}
    report = conversations_import(owner=alice, data=body.encode(), filename="back.json", fmt="sharegpt")
    back = Conversation.objects.get(pk=report.imported[0].id)
    [call] = back.messages.get(position=2).tool_calls
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Lyon", "unit": "c"}
    tool = back.messages.get(position=3)
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", call["id"], '{"temp": 21, "sky": "clear"}')


def test_conversations_openai_would_refuse_are_skipped_and_reported(alice) -> None:
    unanswered = conversation_create(owner=alice, title="Cut off", messages=[
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
    ])
    imported(alice, WEATHER_CHAT)
    Conversation.objects.update(reviewed_at="2026-01-01T00:00:00Z")
    client = logged_in(alice)
    assert len(exported(client)[1].splitlines()) == 1
    report = client.get("/api/conversations/export/report").json()
    assert report["skipped"] == {"role_order": 1}
    assert report["skipped_examples"] == [{"conversation_id": unanswered.pk, "reasons": "role_order"}]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "user", "content": "Hi?"}, {"role": "assistant", "tool_calls": [CALL]},
          {"role": "tool", "tool_call_id": "call_other", "content": "{}"},
          {"role": "assistant", "content": "Done."}], "tool_result_unmatched"),
        ([{"role": "user", "content": "Hi?"},
          {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "not json"}}]},
          {"role": "tool", "tool_call_id": "call_weather_1", "content": "{}"},
          {"role": "assistant", "content": "Done."}], "tool_call_malformed"),
        ([{"role": "user", "content": "Hi?", "weight": 1}, {"role": "assistant", "content": "Hi."}], "invalid_weight"),
        ([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi.", "weight": 2}], "invalid_weight"),
        ([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi.", "mood": "x"}],
         "message_unrecognized_key"),
        ([{"role": "user", "content": "Hi?"}, {"role": "assistant", "tool_calls": [CALL]}], "role_order"),
    ],
)
def test_the_format_check_catches_broken_tool_calls_and_weights(messages, problem) -> None:
    assert problem in openai_problems({"messages": messages})


def test_a_reviewer_marks_reviewed_and_a_plain_member_may_not(alice, bob, charlie) -> None:
    weather = imported(alice, WEATHER_CHAT)
    workspace = workspace_personal(user=alice)
    add_member(actor=alice, workspace=workspace, user=bob, role="member")
    assert logged_in(bob).post(f"/conversations/{weather.pk}/review/").status_code == 403
    assert "Mark reviewed" not in logged_in(bob).get(f"/conversations/{weather.pk}/").content.decode()
    assert logged_in(charlie).post(f"/conversations/{weather.pk}/review/").status_code == 404
    weather.refresh_from_db()
    assert weather.reviewed_at is None
    assert "Mark reviewed" in logged_in(alice).get(f"/conversations/{weather.pk}/").content.decode()


def test_bad_turn_input_is_a_4xx(alice) -> None:
    weather = imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    assert client.post(f"/conversations/{weather.pk}/turn/", {"position": 99, "weight": "0"}).status_code == 400
    assert client.post(f"/conversations/{weather.pk}/turn/", {"position": 4, "weight": "7"}).status_code == 400
    user_turn = client.post(f"/conversations/{weather.pk}/turn/", {"position": 1, "weight": "0"}, follow=True)
    assert "Only assistant turns are weighted or edited" in user_turn.content.decode()
    assert Message.objects.get(conversation=weather, position=1).weight == 1


def test_the_page_download_and_bad_formats(alice) -> None:
    weather = imported(alice, WEATHER_CHAT)
    client = logged_in(alice)
    client.post(f"/conversations/{weather.pk}/review/")
    assert 'data-export="openai-multiturn-reviewed"' in client.get("/conversations/").content.decode()
    response = client.get("/jobs/conversations/export/", {"format": "sharegpt-multiturn"})
    name = export_file(fmt="sharegpt-multiturn", stem="conversations-sharegpt-multiturn-reviewed").name
    assert response["Content-Disposition"] == f'attachment; filename="{name}"' and name.endswith(".json")
    assert len(json.loads(b"".join(response.streaming_content))) == 1
    assert client.get("/jobs/conversations/export/", {"format": "csv"}).status_code == 400
    assert client.get("/api/conversations/export", {"format": "csv"}).status_code == 400


def test_the_export_shows_only_the_users_own_workspaces(alice, charlie) -> None:
    imported(alice, WEATHER_CHAT)
    Conversation.objects.update(reviewed_at="2026-01-01T00:00:00Z")
    assert exported(logged_in(charlie))[1] == ""
    assert len(exported(logged_in(alice))[1].splitlines()) == 1


def test_the_command_exports_conversations_by_tag(alice, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MASSCER_CLI_USER", "alice")
    tagged = imported(alice, {**WEATHER_CHAT, "title": "Tagged"})
    imported(alice, WEATHER_CHAT)
    Conversation.objects.update(reviewed_at="2026-01-01T00:00:00Z")
    Conversation.objects.filter(pk=tagged.pk).update(tags=["Weather"])
    target = tmp_path / "chats.jsonl"
    call_command("export", "--conversations", "--tag", "weather", "--output", str(target))
    [line] = target.read_text().splitlines()
    assert openai_problems(json.loads(line)) == []
    assert f"Wrote 1 conversations to {target}." in capsys.readouterr().err
    with pytest.raises(CommandError, match="--conversations exports"):
        call_command("export", "--conversations", "--format", "csv")
    with pytest.raises(CommandError, match="Give --agent"):
        call_command("export")
