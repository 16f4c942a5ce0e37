"""API: upload, list, read and delete documents."""
# No `from __future__ import annotations`: django-ninja reads the annotations at run time.

from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import File, Form, Router, Schema, UploadedFile
from ninja.errors import HttpError
from ninja.pagination import paginate
from ninja.responses import Status

from masscer.api_common import (
    ERRORS,
    ErrorOut,
    Id,
    Page,
    form_text,
    get_or_404,
    one_file_only,
    user_of,
    username,
)
from workspaces.selectors import workspaces_for

from .models import Document
from .selectors import documents_for
from .services import document_create, document_delete

router = Router(tags=["documents"])


class DocumentOut(Schema):
    id: int
    workspace_id: int
    owner: str | None
    title: str
    filename: str
    kind: str
    size: int
    status: str
    error: str
    page_count: int
    # Pages read so far (of page_count) while the document is being extracted.
    pages_extracted: int
    token_count: int
    chunk_count: int
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Document) -> str | None:
        return username(obj.owner)


def _visible(request: HttpRequest) -> Any:
    return documents_for(user=user_of(request)).select_related("owner")


def too_large(filename: str, size: int) -> HttpError:
    limit = settings.MASSCER_MAX_UPLOAD_BYTES
    return HttpError(413, f"'{filename}' is {size / 1048576:.1f} MB; the limit is {limit / 1048576:.1f} MB.")


@router.post("", response={201: DocumentOut, 413: ErrorOut, **ERRORS})
def documents_upload(
    request: HttpRequest,
    file: File[UploadedFile],
    title: Form[str] = "",
    workspace: Form[Id | None] = None,
) -> Status[Document]:
    """Upload a PDF, DOCX, Markdown, text or HTML file; extraction runs in the background."""
    one_file_only(request)
    user = user_of(request)
    title = form_text(title, label="title", max_length=300)
    name = (file.name or "upload").replace("\x00", "") or "upload"
    if file.size and file.size > settings.MASSCER_MAX_UPLOAD_BYTES:
        raise too_large(name, file.size)
    target = get_or_404(workspaces_for(user=user), workspace, "workspace") if workspace else None
    try:
        document = document_create(owner=user, fileobj=file, filename=name, workspace=target, title=title)
    except ValidationError as exc:
        if getattr(exc, "code", None) == "too_large":
            raise too_large(name, file.size or 0) from exc
        raise
    return Status(201, _visible(request).get(pk=document.pk))


@router.get("", response={200: list[DocumentOut], **ERRORS})
@paginate(Page)
def documents_list(request: HttpRequest) -> Any:
    return _visible(request)


@router.get("/{int:document_id}", response={200: DocumentOut, **ERRORS})
def documents_get(request: HttpRequest, document_id: Id) -> Document:
    return get_or_404(_visible(request), document_id, "document")


@router.delete("/{int:document_id}", response={204: None, 409: ErrorOut, **ERRORS})
def documents_delete(request: HttpRequest, document_id: Id) -> Status[None]:
    """Delete a document (its uploader or a workspace admin); 409 while completions use it."""
    document = get_or_404(_visible(request), document_id, "document")
    document_delete(actor=user_of(request), document=document)
    return Status(204, None)
