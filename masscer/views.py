"""Helpers shared by the apps' views: scoped lookups, pagination, workspace choices."""
from __future__ import annotations

import re
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Page, Paginator
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from workspaces.models import Workspace
from workspaces.selectors import visible_to, workspaces_for

M = TypeVar("M", bound=Model)

PER_PAGE = 25


def get_visible_or_404(queryset: QuerySet[M], *, user: AbstractBaseUser, pk: Any, path: str = "workspace") -> M:
    """The row with this pk if it sits in one of the user's workspaces; 404 otherwise.

    Outsiders get the same 404 as for a missing row, so ids reveal nothing.
    """
    try:
        return visible_to(queryset, user=user, path=path).get(pk=pk)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No {queryset.model._meta.verbose_name} found.") from None


def rows_ids_first(rows: QuerySet[M], start: int, stop: int) -> list[M]:
    """`rows[start:stop]` in two queries: the ids, then those rows.

    The first walks an index however deep the page is (OFFSET reads every skipped row); the
    second reads the joins and the text of the page's rows alone, not of every skipped one.
    """
    ids = list(rows.values_list("pk", flat=True)[start:stop])
    found = {row.pk: row for row in rows.filter(pk__in=ids)} if ids else {}
    return [found[pk] for pk in ids if pk in found]


class IdsFirstPaginator(Paginator):
    """A paginator for wide rows in big tables (completions): pages are read with `rows_ids_first`."""

    def page(self, number: Any) -> Page:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        return self._get_page(rows_ids_first(self.object_list, bottom, top), number, self)


def paginate(
    request: HttpRequest, rows: QuerySet[Any], *, per_page: int = PER_PAGE, param: str = "page",
    count: int | None = None, ids_first: bool = False,
) -> Page:
    """One page of `rows`; with `count` (the number of rows, known already) no COUNT query is
    made; with `ids_first` the page is read by `rows_ids_first` (deep pages of big tables)."""
    paginator = (IdsFirstPaginator if ids_first else Paginator)(rows, per_page)
    if count is not None:
        paginator.count = count  # a cached_property: set, it is never computed
    return paginator.get_page(request.GET.get(param))


_ID = re.compile(r"[0-9]{1,18}")


def id_or_none(value: str | None) -> int | None:
    """A row id from a form or query string, or None for anything else.

    ASCII digits only: str.isdigit() also takes "²" (int() refuses it) and any length
    (int() refuses past 4,300 digits, and a database column past 19).
    """
    value = (value or "").strip()
    return int(value) if _ID.fullmatch(value) else None


def int_list(values: list[str]) -> list[int]:
    """The integers among form values (ids from checkboxes or query strings); junk is ignored."""
    return [number for number in map(id_or_none, values) if number is not None]


def workspace_choices(user: AbstractBaseUser) -> QuerySet[Workspace]:
    return workspaces_for(user=user)


def personal_workspace_id(user: AbstractBaseUser) -> int | None:
    return Workspace.objects.filter(personal_for=user).values_list("pk", flat=True).first()


def posted(request: HttpRequest) -> Any:
    """The POST data to bind a form to, or None on GET (a POST carrying only files is still a POST)."""
    return request.POST if request.method == "POST" else None
