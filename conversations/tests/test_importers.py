"""Parsing only: no database."""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from conversations import importers
from conversations.importers import (
    ImportFormatError,
    ParseResult,
    detect_format,
    parse,
)

from .conftest import as_json, sample

DRAFT = "What about the B-tension screw? (draft that was edited)"


def roles(result: ParseResult, index: int = 0) -> list[str]:
    return [message.role for message in result.conversations[index].messages]


def chatgpt_node(node_id: str, parent: str | None, role: str | None, text: str = "", **extra: Any) -> dict[str, Any]:
    message = None
    if role is not None:
        message = {"id": node_id, "author": {"role": role}, "content": {"content_type": "text", "parts": [text]}}
        message.update(extra)
    return {"id": node_id, "parent": parent, "children": [], "message": message}


def chatgpt_conversation(conversation_id: str, nodes: list[dict[str, Any]], current: str | None) -> dict[str, Any]:
    return {
        "title": f"Conversation {conversation_id}",
        "conversation_id": conversation_id,
        "mapping": {node["id"]: node for node in nodes},
        "current_node": current,
    }


def simple_chatgpt(conversation_id: str) -> dict[str, Any]:
    return chatgpt_conversation(
        conversation_id,
        [
            chatgpt_node("root", None, None),
            chatgpt_node("q", "root", "user", "Which tyre pressure for gravel?"),
            chatgpt_node("a", "q", "assistant", "About 2.5 bar for 40 mm tyres."),
        ],
        "a",
    )


# --------------------------------------------------------------------------- the samples


@pytest.mark.parametrize(
    ("name", "expected"),
    [("openai-messages.jsonl", "openai"), ("sharegpt.json", "sharegpt"), ("chatgpt-export.json", "chatgpt")],
)
def test_it_detects_the_format_of_each_sample(name: str, expected: str) -> None:
    assert detect_format(sample(name), name) == expected


def test_it_reads_the_openai_sample_with_its_tool_call_and_result() -> None:
    result = parse(sample("openai-messages.jsonl"), "openai-messages.jsonl")

    assert result.format == "openai"
    assert result.problems == []
    assert [c.title for c in result.conversations] == ["Warranty on a cracked frame", "Tubeless setup"]
    assert [c.external_id for c in result.conversations] == ["line 1", "line 2"]
    assert roles(result, 0) == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert roles(result, 1) == ["user", "assistant", "user", "assistant"]
    call, tool_result = result.conversations[0].messages[2:4]
    assert call.content == ""
    assert call.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup_policy", "arguments": '{"topic": "frame warranty"}'},
        }
    ]
    assert tool_result.tool_call_id == "call_1"
    assert tool_result.name == "lookup_policy"  # taken from the call it answers
    assert tool_result.content.startswith("Frames: 5-year warranty against manufacturing defects")
    assert result.conversations[1].messages[3].content.startswith("Every 3 to 6 months")


def test_it_reads_the_sharegpt_sample() -> None:
    result = parse(sample("sharegpt.json"), "sharegpt.json")

    assert result.problems == []
    assert [c.external_id for c in result.conversations] == ["sg-1", "sg-2"]
    assert roles(result, 0) == ["system", "user", "assistant", "user", "assistant"]
    assert roles(result, 1) == ["user", "assistant"]
    first = result.conversations[0].messages
    assert first[0].content == "You answer questions about Northwind Cycles' service plans."
    assert first[3].content == "Can I cancel it?"
    # No title in ShareGPT: the first question stands in.
    assert result.conversations[1].title == "Do you ship e-bike batteries abroad?"


def test_it_reads_only_the_visible_thread_of_the_chatgpt_export() -> None:
    result = parse(sample("chatgpt-export.json"), "chatgpt-export.json")

    assert result.problems == []
    [conversation] = result.conversations
    assert conversation.title == "Derailleur adjustment"
    assert conversation.external_id == "c0ffee00-0000-4000-8000-000000000001"
    # The empty system message (n1) is dropped; n4, the edited draft, is on another branch.
    assert roles(result) == ["user", "assistant", "user", "assistant"]
    contents = [message.content for message in conversation.messages]
    assert contents[0] == "How do I adjust the rear derailleur on a Shimano Deore groupset?"
    assert contents[2] == "What does the B-tension screw do?"
    assert contents[3].startswith("The B-tension screw sets the gap")
    assert not any("draft that was edited" in content for content in contents)
    assert conversation.skipped_parts == 0


# --------------------------------------------------------------------------- OpenAI shapes


def test_it_reads_one_openai_object_a_list_of_them_and_a_bare_message_list() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

    single = parse(as_json({"title": "Greeting", "messages": messages}), "chat.json")
    many = parse(as_json([{"messages": messages}, {"messages": messages}]), "chats.json")
    bare = parse(as_json(messages), "messages.json")

    assert [c.title for c in single.conversations] == ["Greeting"]
    assert [c.external_id for c in many.conversations] == ["#1", "#2"]
    assert roles(bare) == ["user", "assistant"]


def test_it_joins_text_parts_and_counts_the_others_as_skipped() -> None:
    content = [
        {"type": "text", "text": "What is wrong with this chain?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "It skips under load."},
    ]
    answer = {"role": "assistant", "content": "It is worn."}
    data = as_json({"messages": [{"role": "user", "content": content}, answer]})

    [conversation] = parse(data, "chat.json").conversations

    assert conversation.messages[0].content == "What is wrong with this chain?\nIt skips under load."
    assert conversation.skipped_parts == 1


# --------------------------------------------------------------------------- ShareGPT shapes


def test_it_maps_sharegpt_function_calls_and_observations_to_tool_messages() -> None:
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    data = as_json(
        {
            "conversations": [
                {"from": "human", "value": "Can I ride in Paris today?"},
                {"from": "function_call", "value": call},
                {"from": "observation", "value": '{"forecast": "dry, 18 C"}'},
                {"from": "gpt", "value": "Yes: dry and 18 C."},
            ]
        }
    )

    [conversation] = parse(data, "sharegpt.json").conversations

    assert [m.role for m in conversation.messages] == ["user", "assistant", "tool", "assistant"]
    assistant, tool = conversation.messages[1:3]
    assert assistant.content == call
    assert assistant.tool_calls == [
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert (tool.name, tool.tool_call_id) == ("get_weather", "call_2")


def test_a_sharegpt_function_call_that_is_not_json_stays_plain_text() -> None:
    turns = [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "lookup()"}]
    data = as_json({"conversations": turns})

    [conversation] = parse(data, "sharegpt.json").conversations

    assert conversation.messages[1].content == "lookup()"
    assert conversation.messages[1].tool_calls is None


# --------------------------------------------------------------------------- bad conversations


def test_an_unknown_role_is_a_problem_naming_the_role_and_the_others_are_kept() -> None:
    data = as_json(
        [
            {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"id": "odd", "conversations": [{"from": "human", "value": "Hi"}, {"from": "narrator", "value": "..."}]},
        ]
    )

    result = parse(data, "sharegpt.json")

    assert [c.external_id for c in result.conversations] == ["ok"]
    [problem] = result.problems
    assert problem.index_or_id == "odd"
    assert "unknown role 'narrator'" in problem.reason


def test_a_conversation_without_a_user_turn_is_a_problem() -> None:
    data = as_json([{"messages": [{"role": "system", "content": "Be nice."}, {"role": "assistant", "content": "Hi!"}]}])

    result = parse(data, "chats.json")

    assert result.conversations == []
    assert [(p.index_or_id, p.reason) for p in result.problems] == [("#1", "no user turn")]


def test_an_empty_conversation_is_a_problem() -> None:
    data = as_json([{"messages": []}, {"messages": [{"role": "user", "content": "   "}]}])

    result = parse(data, "chats.json")

    assert result.conversations == []
    assert [p.reason for p in result.problems] == ["empty conversation: no message with text"] * 2


def test_truncated_json_is_a_format_error_with_the_position() -> None:
    data = sample("sharegpt.json")[:400]

    with pytest.raises(ImportFormatError, match=r"^invalid JSON at line \d+ column \d+"):
        parse(data, "sharegpt.json")


def test_a_bad_jsonl_line_is_a_problem_for_that_line_only() -> None:
    lines = sample("openai-messages.jsonl").splitlines()
    data = b"\n".join([lines[0], lines[1][:50], lines[1]])

    result = parse(data, "openai-messages.jsonl")

    assert [c.external_id for c in result.conversations] == ["line 1", "line 3"]
    [problem] = result.problems
    assert problem.index_or_id == "line 2"
    assert problem.reason.startswith("invalid JSON at column")


def test_a_file_that_is_not_a_conversation_file_names_the_accepted_formats() -> None:
    for data in (b"# Notes\n\nJust some markdown.", as_json({"rows": [1, 2]}), b"\x89PNG\r\n\x1a\n\x00\x00"):
        with pytest.raises(ImportFormatError) as caught:
            parse(data, "notes.txt")
        assert "not a recognised conversation file; accepted: OpenAI chat messages JSON/JSONL, ShareGPT JSON, " \
            "ChatGPT data export (conversations.json or its .zip)" in str(caught.value)


def test_an_unknown_format_name_is_refused() -> None:
    with pytest.raises(ImportFormatError, match="unknown format 'csv'"):
        parse(sample("sharegpt.json"), "sharegpt.json", fmt="csv")


def test_an_over_limit_file_is_refused_with_both_sizes() -> None:
    data = sample("chatgpt-export.json")

    with pytest.raises(ImportFormatError, match=r"^The file is 3,678 bytes; the limit is 1,000 bytes\.$"):
        parse(data, "chatgpt-export.json", max_bytes=1000)
    with pytest.raises(ImportFormatError, match=r"^The file is 52\.0 MB; the limit is 50\.0 MB\.$"):
        parse(b" " * (52 * 1024 * 1024), "big.json")


# --------------------------------------------------------------------------- ChatGPT trees


def test_a_cycle_in_the_message_tree_is_a_problem_and_the_others_are_imported() -> None:
    looped = chatgpt_conversation(
        "looped",
        [chatgpt_node("q", "a", "user", "Hi"), chatgpt_node("a", "q", "assistant", "Hello")],
        "a",
    )

    result = parse(as_json([simple_chatgpt("good"), looped]), "conversations.json")

    assert [c.external_id for c in result.conversations] == ["good"]
    assert [(p.index_or_id, p.reason) for p in result.problems] == [("looped", "cycle in the message tree")]


def test_a_missing_current_node_is_a_problem() -> None:
    missing = simple_chatgpt("no-current")
    missing["current_node"] = None
    dangling = simple_chatgpt("dangling")
    dangling["current_node"] = "gone"

    result = parse(as_json([missing, dangling, simple_chatgpt("good")]), "conversations.json")

    assert [c.external_id for c in result.conversations] == ["good"]
    reasons = {p.index_or_id: p.reason for p in result.problems}
    assert "no current_node" in reasons["no-current"]
    assert "current_node 'gone' is not in the message tree" in reasons["dangling"]


def test_hidden_messages_and_non_text_parts_are_left_out_and_counted() -> None:
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://x"}
    nodes = [
        chatgpt_node("root", None, None),
        chatgpt_node("ctx", "root", "user", "my profile", metadata={"is_visually_hidden_from_conversation": True}),
        chatgpt_node("q", "ctx", "user"),
        chatgpt_node("code", "q", "assistant", recipient="python"),
        chatgpt_node("a", "code", "assistant", "The chain is worn."),
    ]
    nodes[2]["message"]["content"] = {"content_type": "multimodal_text", "parts": [image, "Is this chain worn?"]}
    nodes[3]["message"]["content"] = {"content_type": "code", "text": "measure(chain)"}
    data = as_json([chatgpt_conversation("pic", nodes, "a")])

    [conversation] = parse(data, "conversations.json").conversations

    assert [(m.role, m.content) for m in conversation.messages] == [
        ("user", "Is this chain worn?"),
        ("assistant", "The chain is worn."),
    ]
    assert conversation.skipped_parts == 2  # the image and the code message


def test_an_unknown_chatgpt_author_role_is_a_problem() -> None:
    odd = simple_chatgpt("odd")
    odd["mapping"]["a"]["message"]["author"]["role"] = "critic"

    result = parse(as_json([odd]), "conversations.json")

    assert "unknown role 'critic'" in result.problems[0].reason


# --------------------------------------------------------------------------- the export .zip


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_it_finds_conversations_json_inside_the_export_zip() -> None:
    data = zipped({"chat.html": b"<html></html>", "conversations.json": sample("chatgpt-export.json")})

    assert detect_format(data, "export.zip") == "chatgpt"
    [conversation] = parse(data, "export.zip").conversations
    assert conversation.title == "Derailleur adjustment"


def test_a_zip_without_conversations_json_is_refused() -> None:
    with pytest.raises(ImportFormatError, match=r"no conversations\.json"):
        parse(zipped({"notes.txt": b"hello"}), "export.zip")


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = zipped({"conversations.json": b"[" + b" " * (4 * 1024 * 1024) + b"]"})
    assert len(bomb) < 64 * 1024  # tiny on disk, 4 MB inflated

    with pytest.raises(ImportFormatError, match=r"uncompressed; the limit is 1\.0 MB"):
        parse(bomb, "export.zip", max_bytes=1024 * 1024)


def test_a_zip_that_lies_about_its_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zipped({"conversations.json": b"[" + b" " * (4 * 1024 * 1024) + b"]"})
    real_member = importers._conversations_member

    def lying_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
        info = real_member(archive)
        info.file_size = 10  # the header claims a tiny file
        return info

    monkeypatch.setattr(importers, "_conversations_member", lying_member)

    with pytest.raises(ImportFormatError):
        parse(bomb, "export.zip", max_bytes=1024 * 1024)


def test_a_jsonl_file_is_read_by_lines_even_with_one_line() -> None:
    data = as_json({"messages": [{"role": "assistant", "content": "Anyone?"}]}) + b"\n"

    result = parse(data, "lonely.jsonl")

    assert [(p.index_or_id, p.reason) for p in result.problems] == [("line 1", "no user turn")]


def test_a_whole_json_document_under_a_jsonl_name_is_still_read() -> None:
    data = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}, indent=2).encode()

    [conversation] = parse(data, "mislabelled.jsonl").conversations

    assert conversation.messages[0].content == "Hi"


def test_a_jsonl_file_with_no_readable_line_is_a_format_error() -> None:
    with pytest.raises(ImportFormatError, match=r"^invalid JSON at line 3 column 1: Expecting value$"):
        parse(b'{"messages": [\n{"messages": \n', "broken.jsonl")
