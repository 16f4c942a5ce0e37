"""Streaming: a (non-streaming) answer body as OpenAI's server-sent event chunks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FIRST_SPACE = re.compile(r"\s*")
_PIECE = re.compile(r"\S+\s*")


def _pieces(text: str) -> list[str]:
    """One piece per word (with its trailing space); joined they give ``text``."""
    lead = _FIRST_SPACE.match(text)
    head = lead.group() if lead else ""
    pieces = _PIECE.findall(text[len(head) :])
    if pieces:
        pieces[0] = head + pieces[0]
    elif head:
        pieces = [head]
    return pieces


def stream_chunks(outcome_body: Mapping[str, Any], *, include_usage: bool) -> list[tuple[str, Any]]:
    """The SSE payloads for a (non-streaming) body: ("content" | "final" | "usage" | "done", payload)."""
    chat = outcome_body.get("object") == "chat.completion"
    choice = outcome_body["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    base = {
        "id": outcome_body["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": outcome_body["created"],
        "model": outcome_body["model"],
    }
    if include_usage:
        base["usage"] = None

    def chunk(content: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            item = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            item = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [item]}

    events: list[tuple[str, Any]] = []
    if chat:
        events.append(("content", chunk("", None, role=True)))
    events.extend(("content", chunk(piece, None)) for piece in _pieces(text))
    events.append(("final", chunk(None if chat else "", choice["finish_reason"])))
    if include_usage and "usage" in outcome_body:
        events.append(("usage", {**base, "choices": [], "usage": outcome_body["usage"]}))
    events.append(("done", "[DONE]"))
    return events
