"""Chat replies: what the fake answers to a chat without the generation conventions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .prompts import _TRANSCRIPT_USER, PromptInfo, _chat_prompt, reference_questions


def conversational(info: PromptInfo) -> bool:
    """A chat without the generation conventions (no source, no pair count)."""
    return info.source is None and info.count is None


def _reply_text(prompt: str, last_user: str, user_turns: int) -> str:
    questions = reference_questions(prompt)
    said = " ".join(last_user.split())
    if len(said) > 120:
        said = said[:119] + "…"
    if questions:
        listed = " | ".join(f"«{q}»" for q in questions)
        seen = f"I was given {len(questions)} reference example(s): {listed}."
    else:
        seen = "I was given no reference examples."
    return (
        f"This is the fake model answering “{said}” (user turn {user_turns}). "
        f"{seen} Thank you for trying the playground."
    )


def chat_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    """The fake's answer to a Chat Completions request without generation conventions."""
    users = [
        str(m.get("content") or "")
        for m in messages
        if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    prompt = _chat_prompt({"messages": list(messages)})
    return _reply_text(prompt, users[-1] if users else "", len(users))


def transcript_reply(prompt: str) -> str:
    """The fake's answer to a ``User:``/``Assistant:`` transcript (completion mode)."""
    users = _TRANSCRIPT_USER.findall(prompt)
    return _reply_text(prompt, users[-1] if users else "", len(users))
