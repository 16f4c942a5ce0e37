"""Multi-turn export of whole conversations, tool calls and tool results included.

Formats (file names and media types from `export.export_file`):

- `openai-multiturn`: OpenAI chat fine-tuning JSONL, one conversation per line:
  `{"messages": [system?, user, assistant, …]}`. An assistant turn that calls tools carries
  `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments"}}`, arguments a
  JSON string) and each call's result follows as `{"role": "tool", "tool_call_id", "content"}`.
  Every assistant message has `weight`: 1 to learn from it, 0 to keep it as context only (set
  per message by a reviewer). Each line passes the same check as the single-turn export
  (`openai_check.openai_problems`); a conversation that fails is skipped and reported.
- `sharegpt-multiturn`: one JSON array of `{"conversations": [{"from": "human" | "gpt" |
  "function_call" | "observation", "value"}], "system"?}` (the shape LLaMA-Factory reads and our
  own importer too). A tool call is a `function_call` turn whose value is
  `{"name", "arguments"}` as JSON (a list of them for parallel calls); the results of one
  assistant turn's calls are one `observation`. ShareGPT has no per-turn weight.

Which conversations: those the door selected (visible to the user, by workspace, tag or ids),
by default only the reviewed ones (`Conversation.reviewed_at`, set by a reviewer), read in
batches with their messages, so memory does not grow with the export.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from django.db.models import Prefetch, QuerySet

from conversations.models import Conversation, Message

from .export import CONVERSATION_FORMATS, MAX_EXAMPLE_TOKENS, ExportReport
from .openai_check import openai_problems

REVIEWED = ("reviewed", "all")
BATCH = 100  # conversations per query; each brings its messages


def conversations_selected(
    rows: QuerySet[Conversation], *, reviewed: str = "reviewed", ids: Sequence[int] = ()
) -> QuerySet[Conversation]:
    """Narrow the conversations a user may see to an export's selection (a tag is matched while
    streaming, `conversation_export_lines(tag=…)`: JSON containment is not portable to SQLite)."""
    if reviewed not in REVIEWED:
        raise ValueError(f"Unknown selection {reviewed!r}; use one of {', '.join(REVIEWED)}.")
    if reviewed == "reviewed":
        rows = rows.filter(reviewed_at__isnull=False)
    if ids:
        rows = rows.filter(pk__in=list(ids))
    return rows


def _batches(rows: QuerySet[Conversation], tag: str) -> Iterator[Conversation]:
    ordered = Message.objects.order_by("position")
    query = rows.order_by("pk").prefetch_related(Prefetch("messages", queryset=ordered, to_attr="thread"))
    wanted = tag.strip().lower()
    for conversation in query.iterator(chunk_size=BATCH):
        if not wanted or wanted in {str(t).strip().lower() for t in conversation.tags or []}:
            yield conversation


# --- OpenAI ----------------------------------------------------------------------------------


def tool_call(call: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    """A stored tool call in OpenAI's shape (the legacy and loose shapes importers keep included)."""
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments", function.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else fallback_id
    return {"id": call_id, "type": "function", "function": {"name": function.get("name", ""), "arguments": arguments}}


def openai_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.content or not message.tool_calls:
        out["content"] = message.content
    if message.role == Message.Role.TOOL:
        out["tool_call_id"] = message.tool_call_id
    elif message.name:
        out["name"] = message.name
    if message.role == Message.Role.ASSISTANT:
        if message.tool_calls:
            calls = [call for call in message.tool_calls if isinstance(call, dict)]
            out["tool_calls"] = [tool_call(call, f"call_{message.position}_{n}") for n, call in enumerate(calls)]
        out["weight"] = message.weight
    return out


def openai_example(conversation: Conversation) -> dict[str, Any]:
    return {"messages": [openai_message(message) for message in conversation.thread]}


# --- ShareGPT --------------------------------------------------------------------------------


def _call_value(calls: list[dict[str, Any]]) -> str:
    plain = [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")} for c in calls
    ]
    return json.dumps(plain[0] if len(plain) == 1 else plain, ensure_ascii=False)


def sharegpt_element(example: dict[str, Any]) -> dict[str, Any]:
    """A checked OpenAI example as ShareGPT turns (tool results of one call round joined)."""
    messages = example["messages"]
    element: dict[str, Any] = {}
    if messages[0]["role"] == "system":
        element["system"] = messages[0]["content"]
        messages = messages[1:]
    turns: list[dict[str, str]] = []
    for message in messages:
        role = message["role"]
        if role == "tool" and turns and turns[-1]["from"] == "observation":
            turns[-1]["value"] += "\n" + message["content"]
        elif role == "tool":
            turns.append({"from": "observation", "value": message["content"]})
        elif message.get("tool_calls"):
            turns.append({"from": "function_call", "value": _call_value(message["tool_calls"])})
        else:
            turns.append({"from": "human" if role == "user" else "gpt", "value": message["content"]})
    return {"conversations": turns, **element}


# --- the stream ------------------------------------------------------------------------------


def conversation_export_lines(
    *,
    conversations: QuerySet[Conversation],
    fmt: str,
    tag: str = "",
    max_tokens: int = MAX_EXAMPLE_TOKENS,
    report: ExportReport | None = None,
) -> Iterator[str]:
    """The export file, piece by piece (a view can stream it as it is)."""
    if fmt not in CONVERSATION_FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(CONVERSATION_FORMATS)}.")
    report = report if report is not None else ExportReport(unit="conversation")
    sharegpt = fmt == "sharegpt-multiturn"
    first = True
    if sharegpt:
        yield "["
    for conversation in _batches(conversations, tag):
        example = openai_example(conversation)
        problems = openai_problems(example, max_tokens=max_tokens)
        if problems:
            report.skip(conversation.pk, problems)
            continue
        report.written["train"] += 1
        report.sources["train"] += 1
        if not sharegpt:
            yield json.dumps(example, ensure_ascii=False) + "\n"
            continue
        yield ("\n" if first else ",\n") + json.dumps(sharegpt_element(example), ensure_ascii=False)
        first = False
    report.written.setdefault("train", 0)
    report.sources.setdefault("train", 0)
    if sharegpt:
        yield "]\n" if first else "\n]\n"


def conversation_export_report(
    *, conversations: QuerySet[Conversation], fmt: str = "openai-multiturn", tag: str = "",
    max_tokens: int = MAX_EXAMPLE_TOKENS,
) -> ExportReport:
    """Run an export without keeping its output, for the report alone."""
    report = ExportReport(unit="conversation")
    for _ in conversation_export_lines(
        conversations=conversations, fmt=fmt, tag=tag, max_tokens=max_tokens, report=report
    ):
        pass
    return report
