"""The agent playground: one chat turn with an agent, its parameters and its approved material.

The page sends the user's message and the chat so far; ``turn_prepare`` checks them, bounds the
history and builds the ``agents.turns.Turn`` that ``/v1/chat/completions`` builds too: the same
retrieval, shared rate limit, call slots, reply filter and chat log (see ``agents.turns``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db.models import Count, Q

from masscer.lib.tokens import count_tokens
from training.models import Assignment, Completion

from .models import Agent
from .reply_filter import strip_markup
from .retrieval import Retrieved
from .turns import (  # noqa: F401 - the playground's names, kept for its callers
    BUSY_RETRY_SECONDS,
    DEFAULT_MAX_WAIT,
    REFERENCE_INTRO,
    REPLY_TOKENS_ESTIMATE,
    ChatLog,
    ModelBusy,
    NoAnswer,
    Turn,
    agent_params,
    agent_system,
    context_tokens,
    examples_k,
    max_wait,
    shown_reply,
    turn_material,
    turn_reply,
    turn_stream,
    turn_tokens,
)

MAX_MESSAGE_CHARS = 8000
DEFAULT_HISTORY_MESSAGES = 20
DEFAULT_HISTORY_TOKENS = 3000
HISTORY_ROLES = ("user", "assistant")


def history_messages() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_HISTORY_MESSAGES", DEFAULT_HISTORY_MESSAGES))


def history_tokens() -> int:
    return int(getattr(settings, "MASSCER_PLAYGROUND_HISTORY_TOKENS", DEFAULT_HISTORY_TOKENS))


def clean_history(history: Any) -> list[dict[str, str]]:
    """The client's chat history, checked and bounded (newest kept): only user/assistant turns."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise ValueError("The history must be a list of messages.")
    cleaned = []
    for item in history:
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if role not in HISTORY_ROLES or not isinstance(content, str):
            raise ValueError("Each history message needs a role (user or assistant) and a text content.")
        if role == "assistant":  # what the user was shown; a client may have kept the raw reply
            content = strip_markup(content)
        if content.strip():
            cleaned.append({"role": role, "content": content[:MAX_MESSAGE_CHARS]})
    cleaned = cleaned[-history_messages() :] if history_messages() > 0 else []
    return _within_tokens(cleaned, history_tokens())


def _within_tokens(history: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    used = 0
    for message in reversed(history):
        used += count_tokens(message["content"])
        if used > budget:
            break
        kept.append(message)
    kept.reverse()
    # A chat starts with the user; a dangling assistant turn at the start is dropped.
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def turn_messages(
    agent: Agent, *, message: str, history: Sequence[dict[str, str]], examples: Sequence[Retrieved]
) -> list[dict[str, Any]]:
    """System prompt (+ reference examples), then the history, then the user's message."""
    messages = agent_system(agent, examples)
    messages.extend({"role": m["role"], "content": m["content"]} for m in history)
    messages.append({"role": "user", "content": message})
    return messages


def turn_prepare(
    agent: Agent, *, message: str, history: Any = (), tags: Iterable[str] = (), user: Any = None
) -> Turn:
    """Check the input, retrieve the agent's material and build the messages of one turn.

    With ``user``, the turn is logged as that user's chat if the agent logs its chats.
    Raises ValueError with a message for the user when the input is not acceptable.
    """
    message = message.strip() if isinstance(message, str) else ""
    if not message:
        raise ValueError("Type a message first.")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ValueError(f"The message is too long (at most {MAX_MESSAGE_CHARS} characters).")
    past = clean_history(history)
    used = turn_material(agent, message, tags=tags)
    messages = turn_messages(agent, message=message, history=past, examples=used)
    log = None
    if user is not None and agent.log_chats:
        said = [*_full_history(history), {"role": "user", "content": message}]
        log = ChatLog(agent=agent, user=user, via="playground", said=said)
    return Turn(messages=messages, used=used, params=agent_params(agent), log=log)


def _full_history(history: Any) -> list[dict[str, str]]:
    """The whole chat so far (checked by clean_history already), unbounded, for the chat log."""
    return [
        {"role": m["role"], "content": strip_markup(m["content"]) if m["role"] == "assistant" else m["content"]}
        for m in history or ()
        if str(m.get("content") or "").strip()
    ]


def material_summary(agent: Agent) -> dict[str, int]:
    """How much material the agent has, per rule (approved only) and waiting for review."""
    approved = Q(completion__status=Completion.Status.APPROVED)
    rule = Assignment.Rule
    return Assignment.objects.filter(agent=agent).aggregate(
        approved=Count("pk", filter=approved),
        always=Count("pk", filter=approved & Q(rule=rule.ALWAYS)),
        tags=Count("pk", filter=approved & Q(rule=rule.TAGS)),
        retrieve=Count("pk", filter=approved & Q(rule=rule.RETRIEVE)),
        pending=Count("pk", filter=Q(completion__status=Completion.Status.PENDING)),
    )
