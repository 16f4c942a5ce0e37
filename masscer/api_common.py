"""Shared pieces of the JSON API: error schema, bounded input types, lookups that 404, paging.

The per-app `api.py` modules import this; `masscer.api` mounts them. Nothing here imports an app
except `workspaces` (the floor everyone stands on).
"""
from __future__ import annotations

from typing import Annotated, Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest
from ninja import Field, Schema
from ninja.errors import HttpError
from ninja.pagination import LimitOffsetPagination
from pydantic import AfterValidator

from masscer.views import rows_ids_first

M = TypeVar("M", bound=Model)

# Ids fit a 64-bit primary key; bigger numbers are "not found", never a database overflow.
MAX_ID = 2**63 - 1


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters; refuse them at the door with a 400.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Text = Annotated[str, AfterValidator(_no_nul)]


def form_text(value: str, *, label: str, max_length: int) -> str:
    """A form field's text, checked like `Text` (ninja does not combine Form with Annotated types)."""
    if "\x00" in value or len(value) > max_length:
        raise ValidationError(f"{label} must be at most {max_length} characters, without NUL characters.")
    return value


def one_file_only(request: HttpRequest) -> None:
    """Upload routes take one file; a second one would otherwise be dropped without a word."""
    sent = sum(len(files) for _, files in request.FILES.lists())
    if sent > 1:
        raise HttpError(400, f"Send one file per request ({sent} were sent).")


class ErrorOut(Schema):
    detail: str


# Documented on every operation: the shapes of errors (validation, auth, role, not found).
ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


class Page(LimitOffsetPagination):
    """`?limit=&offset=` paging with bounds, answering `{"items": [...], "count": n}`."""

    class Input(Schema):
        limit: int = Field(50, ge=1, le=500)
        offset: int = Field(0, ge=0, le=10**9)


class IdsFirstPage(Page):
    """`Page` for wide rows in big tables (completions): the ids first, then those rows, so a
    deep offset walks an index instead of joining and reading every skipped row."""

    def paginate_queryset(self, queryset: QuerySet[Any], pagination: Page.Input, request: HttpRequest,
                          **params: Any) -> dict[str, Any]:
        offset, limit = pagination.offset, min(pagination.limit, self.max_limit)
        return {self.items_attribute: rows_ids_first(queryset, offset, offset + limit),
                "count": self._items_count(queryset)}


def user_of(request: HttpRequest) -> AbstractBaseUser:
    """The authenticated user (by token or session)."""
    return request.auth  # type: ignore[attr-defined,no-any-return]


def get_or_404(queryset: QuerySet[M], pk: int, label: str = "") -> M:
    """The row of a user-scoped queryset, or 404 (an outsider cannot tell it exists)."""
    if not 1 <= pk <= MAX_ID:
        raise Http404(f"{label or queryset.model._meta.verbose_name} {pk} not found")
    row = queryset.filter(pk=pk).first()
    if row is None:
        raise Http404(f"{label or queryset.model._meta.verbose_name} {pk} not found")
    return row


def all_or_404(queryset: QuerySet[M], ids: list[int], label: str) -> list[M]:
    """Every row of `ids` in a user-scoped queryset, in the given order, or 404 naming the missing."""
    wanted = list(dict.fromkeys(ids))
    rows = {row.pk: row for row in queryset.filter(pk__in=wanted)}
    missing = [pk for pk in wanted if pk not in rows]
    if missing:
        raise Http404(f"{label} {', '.join(map(str, missing))} not found")
    return [rows[pk] for pk in wanted]


def username(user: Any) -> str | None:
    return user.get_username() if user is not None else None
