"""Reviewing a conversation as multi-turn training data: mark it reviewed, choose which assistant
turns to learn from (`weight`), edit an assistant turn's text (the original is kept).

Reviewing is for reviewers and admins of the conversation's workspace (`require_review`), as
for completions; every door (the conversation page, the admin, a command) calls these.
"""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from workspaces.permissions import require_review

from .models import Conversation, Message


@transaction.atomic
def conversation_mark_reviewed(
    *, reviewer: AbstractBaseUser, conversation: Conversation, reviewed: bool = True
) -> Conversation:
    """Mark the conversation reviewed (fit for the multi-turn export), or take the mark back."""
    require_review(user=reviewer, workspace_id=conversation.workspace_id, action="review its conversations")
    conversation.reviewed_at = timezone.now() if reviewed else None
    conversation.reviewed_by = reviewer if reviewed else None
    conversation.save(update_fields=["reviewed_at", "reviewed_by", "updated_at"])
    return conversation


def _assistant_turn(message: Message) -> None:
    if message.role != Message.Role.ASSISTANT:
        raise ValidationError("Only assistant turns are weighted or edited for training.", code="role")


@transaction.atomic
def message_review(
    *, reviewer: AbstractBaseUser, message: Message, weight: int | None = None, content: str | None = None
) -> Message:
    """Set an assistant turn's weight (1: learn from it, 0: context only) and/or replace its text;
    None keeps a value. The text before the first edit stays in `original_content`."""
    require_review(
        user=reviewer, workspace_id=message.conversation.workspace_id, action="review its conversations"
    )
    _assistant_turn(message)
    fields: list[str] = []
    if weight is not None:
        if weight not in (0, 1):
            raise ValidationError("A weight is 0 (context only) or 1 (learn from it).", code="weight")
        message.weight = weight
        fields.append("weight")
    if content is not None and content != message.content:
        if not content.strip() and not message.tool_calls:
            raise ValidationError("An assistant turn needs text (or tool calls).", code="empty")
        if not message.original_content:
            message.original_content = message.content
            fields.append("original_content")
        message.content = content.replace("\x00", "")
        fields.append("content")
    if fields:
        message.save(update_fields=fields)
    return message
