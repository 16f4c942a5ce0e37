"""Every write to conversations goes through here."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import DatabaseError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from workspaces.models import Workspace
from workspaces.permissions import require_change
from workspaces.services import workspace_for_write

from .importers import (
    ImportFormatError,
    ParsedConversation,
    ParsedMessage,
    ParseResult,
    Problem,
    parse,
)
from .models import Conversation, ConversationImport, Message

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
    parsed = _parsed(data, filename, fmt, max_bytes)
    report = ImportReport(format=parsed.format, filename=filename, problems=list(parsed.problems))
    imported_at = timezone.now()
    workspace = workspace_for_write(user=owner, workspace=workspace)
    for item in parsed.conversations:
        _import_one(owner=owner, workspace=workspace, item=item, imported_at=imported_at, report=report)
    return report


def _parsed(data: bytes, filename: str, fmt: str | None, max_bytes: int | None) -> ParseResult:
    limit = settings.MASSCER_MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    try:
        return parse(data, filename, fmt, max_bytes=limit)
    except ImportFormatError as exc:
        raise ValidationError(str(exc), code="import_format") from exc


def conversations_import_start(
    *,
    owner: AbstractBaseUser,
    data: bytes,
    filename: str,
    workspace: Workspace | None = None,
    fmt: str | None = None,
    max_bytes: int | None = None,
) -> ImportReport | ConversationImport:
    """Import a file now (its report), or, past `MASSCER_IMPORT_BACKGROUND_OVER` conversations,
    store it and queue it for a worker (the import row, whose progress the pages show).

    The file is read here either way, so a file that cannot be read is refused at once and
    leaves no row (a big import would otherwise hold a web thread for a minute).
    """
    parsed = _parsed(data, filename, fmt, max_bytes)
    if len(parsed.conversations) <= settings.MASSCER_IMPORT_BACKGROUND_OVER:
        return conversations_import(
            owner=owner, data=data, filename=filename, workspace=workspace, fmt=fmt, max_bytes=max_bytes
        )
    return _import_queue(owner=owner, data=data, filename=filename, workspace=workspace, parsed=parsed)


@transaction.atomic
def _import_queue(
    *, owner: AbstractBaseUser, data: bytes, filename: str, workspace: Workspace | None, parsed: ParseResult
) -> ConversationImport:
    from .tasks import import_conversations_task

    row = ConversationImport(
        owner=owner,
        workspace=workspace_for_write(user=owner, workspace=workspace),
        filename=filename[:300],
        format=parsed.format,
        total=len(parsed.conversations),
        problems=[{"index_or_id": p.index_or_id, "reason": p.reason} for p in parsed.problems],
        enqueued_at=timezone.now(),
    )
    row.file.save(filename, ContentFile(data), save=False)
    stored = row.file.name
    try:
        row.save()
    except Exception:
        row.file.storage.delete(stored)
        raise
    import_conversations_task.delay_on_commit(row.pk)
    return row


def conversation_imports_requeue_stale(*, older_than: timedelta) -> int:
    """Re-send imports whose message was lost (queued too long) or whose worker died (lease lapsed)."""
    from .tasks import import_conversations_task

    now = timezone.now()
    Status = ConversationImport.Status
    stale = ConversationImport.objects.filter(
        Q(status=Status.QUEUED, enqueued_at__lt=now - older_than)
        | Q(status=Status.QUEUED, enqueued_at__isnull=True, created_at__lt=now - older_than)
        | Q(status=Status.RUNNING, lease_expires_at__lt=now)
    ).values_list("pk", flat=True)
    ids = list(stale[:200])
    ConversationImport.objects.filter(pk__in=ids).update(enqueued_at=now)
    for import_id in ids:
        import_conversations_task.delay(import_id)
    return len(ids)


IMPORT_BATCH = 100


def _import_claim(import_id: int) -> datetime | None:
    """Take the import (a queued one, or one whose worker's lease lapsed): the lease's end, or None."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    Status = ConversationImport.Status
    claimable = Q(status=Status.QUEUED) | Q(status=Status.RUNNING, lease_expires_at__lt=now)
    updated = ConversationImport.objects.filter(claimable, pk=import_id).update(
        status=Status.RUNNING, lease_expires_at=lease
    )
    return lease if updated == 1 else None


class _LeaseLost(Exception):
    """Another worker took the import over; this one stops (its batch rolled back)."""


def conversation_import_run(*, import_id: int) -> ConversationImport:
    """Work through a queued import a batch at a time, resuming after the last committed batch.

    Each batch's conversations and the progress counters commit together, so a worker that dies
    leaves no conversation imported twice when another one takes the import over.
    """
    lease = _import_claim(import_id)
    row = ConversationImport.objects.get(pk=import_id)
    if lease is None:
        return row
    try:
        with row.file.open("rb") as handle:
            data = handle.read()
        parsed = parse(data, row.filename, row.format, max_bytes=len(data))
    except (ImportFormatError, OSError) as exc:
        return _import_finish(row, status=ConversationImport.Status.FAILED, error=f"The file could not be read: {exc}")
    try:
        while row.done < len(parsed.conversations):
            lease = _import_batch(row, parsed.conversations[row.done : row.done + IMPORT_BATCH], lease)
    except _LeaseLost:
        return ConversationImport.objects.get(pk=import_id)
    return _import_finish(row, status=ConversationImport.Status.DONE)


@transaction.atomic
def _import_batch(row: ConversationImport, items: Sequence[ParsedConversation], lease: datetime) -> datetime:
    report = ImportReport(format="", filename=row.filename)
    imported_at = row.created_at
    for item in items:
        _import_one(owner=row.owner, workspace=row.workspace, item=item, imported_at=imported_at, report=report)
    renewed = timezone.now() + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    problems = row.problems + [{"index_or_id": p.index_or_id, "reason": p.reason} for p in report.problems]
    updated = ConversationImport.objects.filter(pk=row.pk, lease_expires_at=lease).update(
        done=row.done + len(items),
        imported=row.imported + len(report.imported),
        skipped_parts=row.skipped_parts + report.skipped_parts,
        problems=problems,
        lease_expires_at=renewed,
    )
    if updated != 1:
        raise _LeaseLost
    row.done, row.imported, row.problems = row.done + len(items), row.imported + len(report.imported), problems
    row.skipped_parts += report.skipped_parts
    return renewed


def _import_finish(row: ConversationImport, *, status: str, error: str = "") -> ConversationImport:
    ConversationImport.objects.filter(pk=row.pk).update(
        status=status, error=error, finished_at=timezone.now(), lease_expires_at=None, file=""
    )
    if row.file:
        row.file.storage.delete(row.file.name)  # the conversations are the record now
    return ConversationImport.objects.get(pk=row.pk)


def conversation_import_fail(*, import_id: int, error: str) -> None:
    row = ConversationImport.objects.filter(pk=import_id).exclude(status=ConversationImport.Status.DONE).first()
    if row is not None:
        _import_finish(row, status=ConversationImport.Status.FAILED, error=error)


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
