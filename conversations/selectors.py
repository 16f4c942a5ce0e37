"""Reads of conversations."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from .models import Conversation, Message


def conversations_for(*, owner: AbstractBaseUser) -> QuerySet[Conversation]:
    """The owner's conversations, newest first, each with `message_count`."""
    return (
        Conversation.objects.filter(owner=owner)
        .annotate(message_count=Count("messages"))
        .order_by("-created_at", "-id")
    )


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation=conversation).order_by("position")
