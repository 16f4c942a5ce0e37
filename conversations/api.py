"""API: import, list and read conversations."""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.http import HttpRequest
from ninja import File, Form, Router, Schema, UploadedFile
from ninja.errors import HttpError
from ninja.pagination import paginate
from ninja.responses import Status

from masscer.api_common import ERRORS, ErrorOut, Id, Page, get_or_404, one_file_only, user_of, username
from workspaces.selectors import workspaces_for

from .models import Conversation, ConversationImport
from .selectors import conversation_messages, conversations_for, imports_for
from .services import conversations_import_start

router = Router(tags=["conversations"])


class ConversationOut(Schema):
    id: int
    workspace_id: int
    owner: str | None
    title: str
    source_format: str
    external_id: str
    tags: list[str]
    message_count: int
    imported_at: datetime | None
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Conversation) -> str | None:
        return username(obj.owner)


class MessageOut(Schema):
    position: int
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls: list[dict[str, Any]] | None


# The read of one conversation carries its first messages only; the rest are paged through
# `/conversations/{id}/messages` (a 100,000-message conversation was 17 MB in one answer).
FIRST_MESSAGES = 100


class ConversationDetailOut(ConversationOut):
    messages: list[MessageOut]
    messages_next_offset: int | None

    @staticmethod
    def resolve_messages(obj: Conversation) -> list[Any]:
        return list(conversation_messages(conversation=obj)[:FIRST_MESSAGES])

    @staticmethod
    def resolve_messages_next_offset(obj: Conversation) -> int | None:
        return FIRST_MESSAGES if obj.message_count > FIRST_MESSAGES else None  # type: ignore[attr-defined]


class ImportedOut(Schema):
    id: int
    title: str
    message_count: int
    skipped_parts: int


class ProblemOut(Schema):
    index_or_id: str
    reason: str


class ImportReportOut(Schema):
    format: str
    filename: str
    imported: list[ImportedOut]
    problems: list[ProblemOut]
    skipped_parts: int


class ImportOut(Schema):
    """A big file imported in the background: poll `GET /conversations/imports/{id}` until it ends."""

    id: int
    filename: str
    format: str
    status: str
    total: int
    done: int
    imported: int
    skipped_parts: int
    problems: list[ProblemOut]
    error: str
    created_at: datetime
    finished_at: datetime | None


def _visible(request: HttpRequest) -> Any:
    return conversations_for(user=user_of(request)).select_related("owner")


@router.post("/import", response={201: ImportReportOut, 202: ImportOut, 413: ErrorOut, **ERRORS})
def conversations_import_file(
    request: HttpRequest,
    file: File[UploadedFile],
    fmt: Form[Literal["openai", "sharegpt", "chatgpt"] | None] = None,
    workspace: Form[Id | None] = None,
) -> Status[Any]:
    """Import OpenAI messages JSON/JSONL, ShareGPT JSON or a ChatGPT export (.json or .zip).

    Each conversation is stored whole or not at all; the report says what was skipped and why.
    A file of more than `MASSCER_IMPORT_BACKGROUND_OVER` conversations is imported by a worker:
    the answer is 202 with the import, whose progress `GET /conversations/imports/{id}` gives.
    """
    one_file_only(request)
    user = user_of(request)
    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    name = (file.name or "upload").replace("\x00", "") or "upload"
    if file.size and file.size > limit:
        raise HttpError(413, f"'{name}' is {file.size / 1048576:.1f} MB; the limit is {limit / 1048576:.1f} MB.")
    target = get_or_404(workspaces_for(user=user), workspace, "workspace") if workspace else None
    outcome = conversations_import_start(owner=user, data=file.read(), filename=name, workspace=target, fmt=fmt)
    if isinstance(outcome, ConversationImport):
        return Status(202, outcome)
    return Status(201, outcome.as_dict())


@router.get("/imports/{int:import_id}", response={200: ImportOut, **ERRORS})
def conversations_import_progress(request: HttpRequest, import_id: Id) -> ConversationImport:
    """A background import: `status` queued, running, done or failed, and `done` of `total`."""
    return get_or_404(imports_for(user=user_of(request)), import_id, "import")


@router.get("", response={200: list[ConversationOut], **ERRORS})
@paginate(Page)
def conversations_list(request: HttpRequest) -> Any:
    return _visible(request)


@router.get("/{int:conversation_id}", response={200: ConversationDetailOut, **ERRORS})
def conversations_get(request: HttpRequest, conversation_id: Id) -> Conversation:
    return get_or_404(_visible(request), conversation_id, "conversation")


@router.get("/{int:conversation_id}/messages", response={200: list[MessageOut], **ERRORS})
@paginate(Page)
def conversations_messages(request: HttpRequest, conversation_id: Id) -> Any:
    """The conversation's messages in order, `?offset=&limit=` (at most 500 a page)."""
    conversation = get_or_404(conversations_for(user=user_of(request)), conversation_id, "conversation")
    return conversation_messages(conversation=conversation)
