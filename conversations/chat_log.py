"""Chats held with an agent, kept as conversations (the writes of ``Agent.log_chats``).

A chat client (an OpenAI SDK, the playground page) sends the whole chat so far with every turn.
Each logged conversation keeps, in ``external_id``, a digest of its messages under a key (the
agent, the user and the door: one user's API chats and playground chats never mix). A turn whose
history (everything up to its last assistant message) has the digest of a conversation logged
under the same key within ``CHAT_LOG_WINDOW`` continues that conversation: its new messages and
the reply are appended. Any other turn (a new chat, or a history the client edited) starts a new
conversation holding the whole chat. So a chat continued turn by turn is one conversation, and
no turn is ever lost or merged into a chat it did not continue.

Texts are kept as they were said, as imports are: masking personal data (``redact``) is applied
when the conversation is trained, by the job's option, before the model sees any text.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from workspaces.models import Workspace

from .models import Conversation, Message
from .services import conversation_create, message_add

CHAT_LOG_WINDOW = timedelta(hours=24)


def chat_digest(key: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """What identifies a chat so far: the key and each message's role and (stripped) text."""
    said = [[str(m.get("role")), str(m.get("content") or "").strip()] for m in messages]
    payload = json.dumps([key, said], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _kept(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages worth keeping: those with text (or tool calls), with the fields a message has."""
    fields = ("role", "content", "name", "tool_calls", "tool_call_id")
    return [
        {name: m.get(name) for name in fields if m.get(name) is not None}
        for m in messages
        if str(m.get("content") or "").strip() or m.get("tool_calls")
    ]


def _history_end(said: Sequence[Mapping[str, Any]]) -> int:
    """How many messages of `said` are the chat so far (up to its last assistant message)."""
    for index in range(len(said) - 1, -1, -1):
        if said[index].get("role") == "assistant":
            return index + 1
    return 0


@transaction.atomic
def conversation_log_chat(
    *,
    owner: AbstractBaseUser,
    workspace: Workspace,
    key: str,
    source_format: str,
    title: str,
    said: Sequence[Mapping[str, Any]],
    reply: str,
    material: Sequence[int],
) -> Conversation:
    """Log one turn: `said` (the chat as the client sent it) and the `reply` it was given, with
    the ids of the `material` that was in the agent's context for that reply."""
    said = _kept(said)
    answer = {"role": "assistant", "content": reply} if reply.strip() else None
    whole = [*said, answer] if answer else said
    end = _history_end(said)
    earlier = _continued(workspace, source_format, chat_digest(key, said[:end])) if end else None
    if earlier is None:
        conversation = conversation_create(
            owner=owner, workspace=workspace, title=title, source_format=source_format,
            external_id=chat_digest(key, whole), messages=whole,
        )
    else:
        conversation = _append(owner, earlier, [*said[end:], *([answer] if answer else [])], chat_digest(key, whole))
    if answer:
        Message.objects.filter(conversation=conversation, position=_last_position(conversation)).update(
            material=list(material)
        )
    return conversation


def _continued(workspace: Workspace, source_format: str, digest: str) -> Conversation | None:
    since = timezone.now() - CHAT_LOG_WINDOW
    rows = Conversation.objects.select_for_update().filter(
        workspace=workspace, source_format=source_format, external_id=digest, updated_at__gte=since
    )
    return rows.order_by("-updated_at", "-id").first()


def _append(
    owner: AbstractBaseUser, conversation: Conversation, messages: Sequence[Mapping[str, Any]], digest: str
) -> Conversation:
    for message in messages:
        message_add(
            actor=owner, conversation=conversation, role=str(message.get("role")),
            content=str(message.get("content") or ""), name=message.get("name") or "",
            tool_calls=message.get("tool_calls"), tool_call_id=message.get("tool_call_id") or "",
        )
    conversation.external_id = digest
    conversation.save(update_fields=["external_id", "updated_at"])
    return conversation


def _last_position(conversation: Conversation) -> int:
    last = Message.objects.filter(conversation=conversation).aggregate(last=Max("position"))["last"]
    return -1 if last is None else last
