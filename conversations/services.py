"""Every write to conversations goes through here."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import Max
from django.utils import timezone

from workspaces.models import Workspace
from workspaces.permissions import require_change
from workspaces.services import workspace_for_write

from .importers import (
    ImportFormatError,
    ParsedConversation,
    ParsedMessage,
    Problem,
    parse,
)
from .models import Conversation, Message

TITLE_CHARS = Conversation._meta.get_field("title").max_length or 300
ID_CHARS = Message._meta.get_field("name").max_length or 200
TAG_CHARS = 50
ROLES = tuple(Message.Role.values)

MessageInput = Mapping[str, Any] | ParsedMessage


@dataclass(frozen=True)
class ImportedConversation:
    id: int
    title: str
    message_count: int
    skipped_parts: int


@dataclass
class ImportReport:
    format: str
    filename: str
    imported: list[ImportedConversation] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped_parts(self) -> int:
        return sum(item.skipped_parts for item in self.imported)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "filename": self.filename,
            "imported": [vars(item) for item in self.imported],
            "problems": [{"index_or_id": p.index_or_id, "reason": p.reason} for p in self.problems],
            "skipped_parts": self.skipped_parts,
        }


# --------------------------------------------------------------------------- messages


def _message_validate(message: ParsedMessage, *, where: str = "") -> None:
    prefix = f"{where}: " if where else ""
    if message.role not in ROLES:
        raise ValidationError(
            f"{prefix}unknown role {message.role!r}; a message's role is one of {', '.join(ROLES)}.", code="role"
        )
    if not isinstance(message.content, str):
        raise ValidationError(f"{prefix}a message's content must be text.", code="content")
    if message.tool_calls is not None:
        _tool_calls_validate(message, prefix)
    if not message.content.strip() and not message.tool_calls:
        raise ValidationError(f"{prefix}a message needs text (or, from the assistant, tool calls).", code="empty")
    for label, value in (("name", message.name), ("tool_call_id", message.tool_call_id)):
        if len(value) > ID_CHARS:
            raise ValidationError(f"{prefix}{label} is longer than {ID_CHARS} characters.", code=label)


def _tool_calls_validate(message: ParsedMessage, prefix: str) -> None:
    if message.role != "assistant":
        raise ValidationError(f"{prefix}only assistant messages make tool calls.", code="tool_calls")
    calls = message.tool_calls
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise ValidationError(f"{prefix}tool_calls must be a list of objects.", code="tool_calls")


def _as_parsed(message: MessageInput) -> ParsedMessage:
    if isinstance(message, ParsedMessage):
        return message
    return ParsedMessage(
        role=message.get("role", ""),
        content=message.get("content") or "",
        name=message.get("name") or "",
        tool_calls=message.get("tool_calls") or None,
        tool_call_id=message.get("tool_call_id") or "",
    )


def _messages_validated(messages: Sequence[MessageInput]) -> list[ParsedMessage]:
    parsed = [_as_parsed(message) for message in messages]
    for number, message in enumerate(parsed, start=1):
        _message_validate(message, where=f"message {number}")
    return parsed


def _message_row(conversation: Conversation, position: int, message: ParsedMessage) -> Message:
    return Message(
        conversation=conversation,
        position=position,
        role=message.role,
        content=message.content,
        name=message.name,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
    )


# --------------------------------------------------------------------------- conversations


def _title_validate(title: str) -> str:
    title = title.strip()
    if len(title) > TITLE_CHARS:
        raise ValidationError(f"A title is at most {TITLE_CHARS} characters.", code="title")
    return title


def _tags_clean(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
        raise ValidationError("Tags must be a list of words.", code="tags")
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))
    if any(len(tag) > TAG_CHARS for tag in cleaned):
        raise ValidationError(f"A tag is at most {TAG_CHARS} characters.", code="tags")
    return cleaned


@transaction.atomic
def conversation_create(
    *,
    owner: AbstractBaseUser,
    workspace: Workspace | None = None,
    title: str = "",
    source_format: str = "manual",
    external_id: str = "",
    messages: Sequence[MessageInput] = (),
    tags: Sequence[str] = (),
    skipped_parts: int = 0,
    imported_at: datetime | None = None,
) -> Conversation:
    """A conversation and its messages (positions 0..n-1), all or nothing."""
    validated = _messages_validated(messages)  # before any row exists
    conversation = Conversation.objects.create(
        owner=owner,
        workspace=workspace_for_write(user=owner, workspace=workspace),
        title=_title_validate(title),
        source_format=source_format,
        external_id=external_id[:ID_CHARS],
        tags=_tags_clean(tags),
        skipped_parts=skipped_parts,
        imported_at=imported_at,
    )
    Message.objects.bulk_create(
        [_message_row(conversation, position, message) for position, message in enumerate(validated)]
    )
    return conversation


@transaction.atomic
def message_add(
    *,
    actor: AbstractBaseUser,
    conversation: Conversation,
    role: str,
    content: str,
    name: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str = "",
) -> Message:
    """Append one message at the end of the conversation (its creator or a workspace admin)."""
    require_change(user=actor, obj=conversation, action="add messages to it")
    message = ParsedMessage(role=role, content=content, name=name, tool_calls=tool_calls, tool_call_id=tool_call_id)
    _message_validate(message)
    # Locking the conversation row serialises appends, so two never take the same position.
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
    last = Message.objects.filter(conversation=locked).aggregate(last=Max("position"))["last"]
    row = _message_row(locked, 0 if last is None else last + 1, message)
    row.save()
    locked.save(update_fields=["updated_at"])
    return row


@transaction.atomic
def conversation_update(
    *,
    actor: AbstractBaseUser,
    conversation: Conversation,
    title: str | None = None,
    tags: Sequence[str] | None = None,
) -> Conversation:
    """Change the title and/or tags (its creator or a workspace admin); None keeps a value."""
    require_change(user=actor, obj=conversation)
    fields = ["updated_at"]
    if title is not None:
        conversation.title = _title_validate(title)
        fields.append("title")
    if tags is not None:
        conversation.tags = _tags_clean(tags)
        fields.append("tags")
    conversation.save(update_fields=fields)
    return conversation


@transaction.atomic
def conversation_delete(*, actor: AbstractBaseUser, conversation: Conversation) -> None:
    require_change(user=actor, obj=conversation, action="delete it")
    conversation.delete()


# --------------------------------------------------------------------------- import


def conversations_import(
    *,
    owner: AbstractBaseUser,
    data: bytes,
    filename: str,
    workspace: Workspace | None = None,
    fmt: str | None = None,
    max_bytes: int | None = None,
) -> ImportReport:
    """Import every usable conversation of a file, each in its own transaction.

    A file that cannot be read raises ValidationError and stores nothing. Otherwise each
    conversation is saved whole or not at all, and the report lists what was imported and,
    by index or id, what was not and why.
    """
    limit = settings.MASSCER_MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    try:
        parsed = parse(data, filename, fmt, max_bytes=limit)
    except ImportFormatError as exc:
        raise ValidationError(str(exc), code="import_format") from exc
    report = ImportReport(format=parsed.format, filename=filename, problems=list(parsed.problems))
    imported_at = timezone.now()
    workspace = workspace_for_write(user=owner, workspace=workspace)
    for item in parsed.conversations:
        _import_one(owner=owner, workspace=workspace, item=item, imported_at=imported_at, report=report)
    return report


def _import_one(
    *,
    owner: AbstractBaseUser,
    workspace: Workspace,
    item: ParsedConversation,
    imported_at: datetime,
    report: ImportReport,
) -> None:
    try:
        # Its own atomic block (a savepoint inside a caller's transaction): a failure here
        # rolls back this conversation only.
        conversation = conversation_create(
            owner=owner,
            workspace=workspace,
            title=item.title,
            source_format=item.source_format,
            external_id=item.external_id,
            messages=item.messages,
            skipped_parts=item.skipped_parts,
            imported_at=imported_at,
        )
    except ValidationError as exc:
        report.problems.append(Problem(item.external_id, " ".join(exc.messages)))
        return
    except DatabaseError as exc:
        report.problems.append(Problem(item.external_id, f"could not be saved ({exc})"))
        return
    report.imported.append(
        ImportedConversation(
            id=conversation.pk,
            title=conversation.title,
            message_count=len(item.messages),
            skipped_parts=item.skipped_parts,
        )
    )
