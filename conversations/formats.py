"""Readers of the three conversation formats: OpenAI chat `messages`, ShareGPT, ChatGPT export.

Each reader turns one decoded JSON object into a ParsedConversation or raises
ConversationError saying why that conversation cannot be used. Finding the objects in a
file (JSON, JSONL, .zip) is `importers`' job.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from masscer.lib import jsonsafe

ROLES = ("system", "user", "assistant", "tool")
TITLE_CHARS = 300  # Conversation.title
DERIVED_TITLE_CHARS = 80
ID_CHARS = 200  # Conversation.external_id, Message.name, Message.tool_call_id
OPENAI_ROLES = {
    "system": "system",
    "developer": "system",  # the newer name of the system role in OpenAI's API
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",  # the legacy function-calling result
}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
OPENAI_TEXT_PARTS = ("text", "input_text", "output_text")
CHATGPT_TEXT_TYPES = ("text", "multimodal_text")


class ConversationError(ValueError):
    """One conversation cannot be used; the rest of the file still can."""


@dataclass(frozen=True)
class ParsedMessage:
    role: str
    content: str
    name: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str = ""


@dataclass
class ParsedConversation:
    title: str
    source_format: str
    external_id: str
    messages: list[ParsedMessage]
    skipped_parts: int = 0


Parser = Callable[[dict[str, Any], str], ParsedConversation]


# --------------------------------------------------------------------------- shared helpers


def own_id(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    for key in ("conversation_id", "id"):
        if isinstance(value.get(key), (str, int)) and str(value[key]).strip():
            return str(value[key]).strip()[:ID_CHARS]
    return ""


def _clean(text: str) -> str:
    # PostgreSQL text columns reject NUL; it never carries meaning in a chat.
    return text.replace("\x00", "")


def _short(value: Any) -> str:
    return _clean(value).strip()[:ID_CHARS] if isinstance(value, str) else ""


def _title(record: dict[str, Any], messages: list[ParsedMessage]) -> str:
    title = record.get("title")
    if isinstance(title, str) and title.strip():
        return _clean(title).strip()[:TITLE_CHARS]
    first_user = next(message.content for message in messages if message.role == "user")
    line = (first_user.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= DERIVED_TITLE_CHARS else line[: DERIVED_TITLE_CHARS - 1].rstrip() + "…"


def _conversation(
    record: dict[str, Any], index: str, fmt: str, messages: list[ParsedMessage], skipped: int
) -> ParsedConversation:
    if not messages:
        raise ConversationError("empty conversation: no message with text")
    if not any(message.role == "user" for message in messages):
        raise ConversationError("no user turn")
    return ParsedConversation(
        title=_title(record, messages),
        source_format=fmt,
        external_id=own_id(record) or index,
        messages=messages,
        skipped_parts=skipped,
    )


def _role(raw: Any, roles: dict[str, str], where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConversationError(f"{where} has no role")
    role = roles.get(raw.strip().lower())
    if role is None:
        raise ConversationError(f"unknown role {raw!r} in {where}")
    return role


def _name_tool_results(messages: list[ParsedMessage]) -> list[ParsedMessage]:
    """Give each tool result the name of the function whose call it answers (OpenAI omits it)."""
    names: dict[str, str] = {}
    named: list[ParsedMessage] = []
    for message in messages:
        for call in message.tool_calls or []:
            function = call.get("function") if isinstance(call.get("function"), dict) else call
            if isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
                names[call["id"]] = function["name"]
        if message.role == "tool" and not message.name and message.tool_call_id in names:
            message = replace(message, name=names[message.tool_call_id][:ID_CHARS])
        named.append(message)
    return named


# --------------------------------------------------------------------------- OpenAI messages


def _parse_openai(record: dict[str, Any], index: str) -> ParsedConversation:
    raw = record.get("messages")
    if not isinstance(raw, list):
        raise ConversationError("no 'messages' list")
    messages: list[ParsedMessage] = []
    skipped = 0
    for number, item in enumerate(raw, start=1):
        message, parts_skipped = _openai_message(item, f"message {number}")
        skipped += parts_skipped
        if message is not None:
            messages.append(message)
    return _conversation(record, index, "openai", _name_tool_results(messages), skipped)


def _openai_message(item: Any, where: str) -> tuple[ParsedMessage | None, int]:
    if not isinstance(item, dict):
        raise ConversationError(f"{where} is not an object")
    role = _role(item.get("role"), OPENAI_ROLES, where)
    content, skipped = _openai_content(item.get("content"), where)
    tool_calls = _openai_tool_calls(item, where)
    if not content.strip() and not tool_calls:
        return None, skipped  # nothing to learn from
    message = ParsedMessage(
        role=role,
        content=content,
        name=_short(item.get("name")),
        tool_calls=tool_calls,
        tool_call_id=_short(item.get("tool_call_id")),
    )
    return message, skipped


def _openai_content(content: Any, where: str) -> tuple[str, int]:
    """The text of a message; content parts that are not text are counted, not kept."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return _clean(content), 0
    if not isinstance(content, list):
        raise ConversationError(f"{where} has unreadable content")
    texts: list[str] = []
    skipped = 0
    for part in content:
        text = _openai_part_text(part)
        if text is None:
            skipped += 1
        elif text:
            texts.append(_clean(text))
    return "\n".join(texts), skipped


def _openai_part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return None
    if part.get("type") in OPENAI_TEXT_PARTS and isinstance(part.get("text"), str):
        return part["text"]
    if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]
    return None


def _openai_tool_calls(item: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    calls = item.get("tool_calls")
    legacy = item.get("function_call")
    if calls is None and isinstance(legacy, dict):
        calls = [{"type": "function", "function": legacy}]  # the pre-tools function calling
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise ConversationError(f"{where} has unreadable tool_calls")
    return calls


# --------------------------------------------------------------------------- ShareGPT


def _parse_sharegpt(record: dict[str, Any], index: str) -> ParsedConversation:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ConversationError("no 'conversations' list")
    messages: list[ParsedMessage] = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        messages.append(ParsedMessage(role="system", content=_clean(system)))
    pending: tuple[str, str] | None = None  # (call id, function name) awaiting its observation
    for number, turn in enumerate(turns, start=1):
        message, pending = _sharegpt_message(turn, f"message {number}", pending, call_number=number)
        if message is not None:
            messages.append(message)
    return _conversation(record, index, "sharegpt", messages, 0)


def _sharegpt_message(
    turn: Any, where: str, pending: tuple[str, str] | None, *, call_number: int
) -> tuple[ParsedMessage | None, tuple[str, str] | None]:
    if not isinstance(turn, dict):
        raise ConversationError(f"{where} is not an object")
    speaker = turn.get("from", turn.get("role"))
    role = _role(speaker, SHAREGPT_ROLES, where)
    value = turn.get("value", turn.get("content"))
    if value is not None and not isinstance(value, str):
        raise ConversationError(f"{where} has unreadable content")
    text = _clean(value or "")
    if not text.strip():
        return None, pending
    if str(speaker).strip().lower() == "function_call":
        return _sharegpt_call(text, call_id=f"call_{call_number}")
    if role == "tool" and pending is not None:
        call_id, name = pending
        return ParsedMessage(role="tool", content=text, name=name[:ID_CHARS], tool_call_id=call_id), None
    return ParsedMessage(role=role, content=text), pending


def _sharegpt_call(text: str, *, call_id: str) -> tuple[ParsedMessage, tuple[str, str] | None]:
    """A function_call turn: the text stays the content; if it is JSON it is also a tool call."""
    try:
        parsed = jsonsafe.loads(text)
    except jsonsafe.JSONInputError:
        return ParsedMessage(role="assistant", content=text), None
    if not isinstance(parsed, dict):
        return ParsedMessage(role="assistant", content=text), None
    name = parsed.get("name") if isinstance(parsed.get("name"), str) else ""
    arguments = parsed.get("arguments", parsed.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return ParsedMessage(role="assistant", content=text, tool_calls=[call]), (call_id, name)


# --------------------------------------------------------------------------- ChatGPT export


def _parse_chatgpt(record: dict[str, Any], index: str) -> ParsedConversation:
    mapping = record.get("mapping")
    if not isinstance(mapping, dict):
        raise ConversationError("no 'mapping' message tree")
    messages: list[ParsedMessage] = []
    skipped = 0
    for node in _chatgpt_thread(mapping, record.get("current_node")):
        message, parts_skipped = _chatgpt_message(node.get("message"))
        skipped += parts_skipped
        if message is not None:
            messages.append(message)
    return _conversation(record, index, "chatgpt", messages, skipped)


def _chatgpt_thread(mapping: dict[str, Any], current: Any) -> list[dict[str, Any]]:
    """The visible thread: current_node up to the root, reversed. Other branches (regenerated
    answers, edited questions) hang off the same tree but were not what the user last saw."""
    if not isinstance(current, str) or not current:
        raise ConversationError("no current_node, so the visible thread is unknown")
    if current not in mapping:
        raise ConversationError(f"current_node {current!r} is not in the message tree")
    path: list[dict[str, Any]] = []
    seen: set[str] = set()
    node_id: Any = current
    while node_id is not None:
        if node_id in seen:
            raise ConversationError("cycle in the message tree")
        node = mapping.get(node_id) if isinstance(node_id, str) else None
        if not isinstance(node, dict):
            raise ConversationError(f"node {node_id!r} is missing from the message tree")
        seen.add(node_id)
        path.append(node)
        node_id = node.get("parent")
    path.reverse()
    return path


def _chatgpt_message(message: Any) -> tuple[ParsedMessage | None, int]:
    if not isinstance(message, dict):
        return None, 0  # the root node carries no message
    metadata = message.get("metadata")
    if isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation"):
        return None, 0
    author = message.get("author") if isinstance(message.get("author"), dict) else {}
    role = _role(author.get("role"), {role: role for role in ROLES}, f"message {message.get('id')!r}")
    text, skipped = _chatgpt_text(message.get("content"))
    if not text.strip():
        return None, skipped
    name = _short(author.get("name")) if role == "tool" else ""
    return ParsedMessage(role=role, content=text, name=name), skipped


def _chatgpt_text(content: Any) -> tuple[str, int]:
    if not isinstance(content, dict):
        return "", 0
    if content.get("content_type") not in CHATGPT_TEXT_TYPES:
        return "", 1  # code, execution output, browsing display ...: not conversation text
    texts: list[str] = []
    skipped = 0
    for part in content.get("parts") or []:
        if isinstance(part, str):
            texts.append(_clean(part))
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(_clean(part["text"]))  # e.g. an audio transcription
        elif part is not None:
            skipped += 1  # images, files, audio
    return "\n".join(text for text in texts if text), skipped


PARSERS: dict[str, Parser] = {
    "openai": _parse_openai,
    "sharegpt": _parse_sharegpt,
    "chatgpt": _parse_chatgpt,
}
