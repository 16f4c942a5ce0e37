"""OpenAI's fine-tuning format check for chat examples, single- or multi-turn, with tool calls.

Every OpenAI export (an agent's completions, whole conversations) runs each example through
`openai_problems` and skips, with the reasons counted, the ones OpenAI would refuse.
"""
from __future__ import annotations

import json
from typing import Any

from masscer.lib.tokens import count_tokens

# The per-example limit OpenAI's data-preparation check warns about (the context of
# gpt-3.5-turbo-0125); newer models accept more, so the command takes --max-tokens.
MAX_EXAMPLE_TOKENS = 16_385
SKIP_LABELS = {
    "missing_messages_list": "the example has no messages",
    "missing_content": "a message has empty content",
    "too_many_tokens": "the example is over the token limit",
    "role_order": "the roles are not system?, user, assistant (tool calls answered by tool results), … "
    "ending with assistant",
    "unrecognized_role": "a message has a role other than system, user, assistant or tool",
    "message_missing_key": "a message lacks its role or content",
    "message_unrecognized_key": "a message has a key OpenAI does not take",
    "example_missing_assistant_message": "the example has no assistant message",
    "invalid_weight": "a weight is not 0 or 1, or is on a message that is not the assistant's",
    "tool_call_malformed": "a tool call lacks its id, function name or JSON arguments",
    "tool_result_unmatched": "a tool result answers no pending tool call",
}
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})


# --- OpenAI's format check ------------------------------------------------------------------


def example_tokens(messages: list[dict[str, Any]]) -> int:
    """Tokens of a chat example, counted as OpenAI's cookbook does (3 per message, 3 to prime);
    tool calls count as their JSON."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                total += count_tokens(value)
            elif key == "tool_calls":
                total += count_tokens(json.dumps(value, ensure_ascii=False))
            if key == "name":
                total += 1
    return total


def openai_problems(example: Any, *, max_tokens: int = MAX_EXAMPLE_TOKENS) -> list[str]:
    """Why OpenAI's fine-tuning check would refuse an example (empty list: it passes).

    Follows the cookbook's data-preparation check (message keys, recognised roles, content,
    an assistant message, tokens per example) and adds the role order the API expects: an
    optional system message first, then user and assistant turns alternating, ending with the
    assistant. An assistant message may call tools instead of (or besides) writing content;
    each call is then answered by a tool message with its `tool_call_id` before the assistant
    speaks again. `weight` (0 or 1) is for assistant messages only.
    """
    messages = example.get("messages") if isinstance(example, dict) else None
    if not isinstance(messages, list) or not messages:
        return ["missing_messages_list"]
    problems: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            return ["message_missing_key"]
        if "content" not in message and not message.get("tool_calls"):
            return ["message_missing_key"]
        problems.extend(_message_problems(message))
    if "assistant" not in [message["role"] for message in messages]:
        problems.append("example_missing_assistant_message")
    problems.extend(_order_problems(messages))
    if not problems and example_tokens(messages) > max_tokens:
        problems.append("too_many_tokens")
    return sorted(set(problems))


def _message_problems(message: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    role = message["role"]
    if role not in ROLES:
        problems.append("unrecognized_role")
    if set(message) - MESSAGE_KEYS:
        problems.append("message_unrecognized_key")
    calls = message.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list) or not all(_tool_call_ok(call) for call in calls):
            problems.append("tool_call_malformed")
        if message.get("content") is not None and not isinstance(message["content"], str):
            problems.append("missing_content")
    elif not isinstance(message.get("content"), str) or not message["content"].strip():
        problems.append("missing_content")
    if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
        problems.append("invalid_weight")
    return problems


def _tool_call_ok(call: Any) -> bool:
    """`{"id", "type": "function", "function": {"name", "arguments": "<a JSON object>"}}`."""
    if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"].strip():
        return False
    function = call.get("function")
    if call.get("type") != "function" or not isinstance(function, dict):
        return False
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        return False
    try:
        return isinstance(json.loads(function.get("arguments")), dict)
    except (TypeError, ValueError):
        return False


def _call_ids(message: dict[str, Any]) -> set[str]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return set()
    return {call["id"] for call in calls if isinstance(call, dict) and isinstance(call.get("id"), str)}


def _order_problems(messages: list[dict[str, Any]]) -> list[str]:
    """system?, then user → assistant turns; an assistant's tool calls are each answered by a
    tool message before the assistant speaks again; the last message is the assistant's answer."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    expected, pending = {"user"}, set[str]()
    for message in body:
        role = message["role"]
        if role not in expected:
            return ["role_order"]
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return ["tool_result_unmatched"]
            pending.discard(message["tool_call_id"])
            expected = {"tool"} if pending else {"assistant"}
        elif role == "assistant" and message.get("tool_calls"):
            pending, expected = _call_ids(message), {"tool"}
        else:
            expected = {"assistant"} if role == "user" else {"user"}
    if not body or pending or body[-1]["role"] != "assistant":
        return ["role_order"]
    return []
