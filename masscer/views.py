"""Helpers shared by the apps' views: scoped lookups, pagination, workspace choices."""
from __future__ import annotations

from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Page, Paginator
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from workspaces.models import Membership, Workspace
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


def paginate(request: HttpRequest, rows: QuerySet[Any], *, per_page: int = PER_PAGE, param: str = "page") -> Page:
    return Paginator(rows, per_page).get_page(request.GET.get(param))


def int_list(values: list[str]) -> list[int]:
    """The integers among form values (ids from checkboxes or query strings); junk is ignored."""
    return [int(value) for value in values if value.strip().isdigit()]


def reviewer_workspace_ids(user: AbstractBaseUser) -> set[int]:
    """Workspaces where the user may approve and reject (one query)."""
    return set(
        Membership.objects.filter(user=user, role__in=Membership.REVIEW_ROLES).values_list("workspace_id", flat=True)
    )


def workspace_choices(user: AbstractBaseUser) -> QuerySet[Workspace]:
    return workspaces_for(user=user)


def personal_workspace_id(user: AbstractBaseUser) -> int | None:
    return Workspace.objects.filter(personal_for=user).values_list("pk", flat=True).first()


def posted(request: HttpRequest) -> Any:
    """The POST data to bind a form to, or None on GET (a POST carrying only files is still a POST)."""
    return request.POST if request.method == "POST" else None
