"""Reads of conversations."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from workspaces.selectors import visible_to

from .models import Conversation, ConversationImport, Message


def conversations_for(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    """Conversations of the user's workspaces, newest first, each with `message_count`."""
    return (
        visible_to(Conversation.objects.all(), user=user)
        .annotate(message_count=Count("messages"))
        .order_by("-created_at", "-id")
    )


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation=conversation).order_by("position")


def imports_for(*, user: AbstractBaseUser) -> QuerySet[ConversationImport]:
    """Background imports of the user's workspaces, newest first."""
    return visible_to(ConversationImport.objects.select_related("owner", "workspace"), user=user)
