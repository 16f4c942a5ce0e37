"""Shared pieces of the back office (Django admin): workspace scoping, and writes through services.

The admin is a door like the pages and the API, so it holds to the same rules: staff see the rows
of their workspaces (superusers: all of them), and every change goes through the service the
app's pages call, with `request.user` as the actor. The services check workspace roles whatever
the user's Django permissions, superusers included; the `has_*_permission` hooks below ask the
same rule (`workspaces.permissions`) only so that the admin does not offer what will be refused.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from workspaces.permissions import can_change
from workspaces.selectors import visible_to


class WorkspaceScopedAdmin(admin.ModelAdmin):
    """Rows of the staff user's workspaces (`workspace_path` leads from a row to its workspace)."""

    workspace_path = "workspace"

    def scope(self, rows: QuerySet[Any], user: AbstractBaseUser) -> QuerySet[Any]:
        return visible_to(rows, user=user, path=self.workspace_path)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows = super().get_queryset(request)
        return rows if request.user.is_superuser else self.scope(rows, request.user)


class ReadOnly:
    """For admins and inlines of rows that only the app's workers and services write."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnly, WorkspaceScopedAdmin):
    """Rows made and changed by the app's workers and services only (pages, chunks, work items)."""


class ServiceDeleteAdmin(WorkspaceScopedAdmin):
    """A workspace object (document, conversation, agent) staff can look at and delete.

    It is created and edited in the app, whose services check what comes in; here it is read
    only, and a deletion (one, or "delete selected") is the app's delete service, called with
    `request.user`, for each row.
    """

    def delete_with_service(self, actor: AbstractBaseUser, obj: Any) -> None:
        raise NotImplementedError

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or can_change(user=request.user, obj=obj))

    def get_deleted_objects(self, objs: Iterable[Model], request: HttpRequest) -> tuple[Any, ...]:
        # Rows that go with the object (pages, chunks) have read-only admins; the object's own
        # rule decides, so only the objects themselves can make the deletion "need" a permission.
        objs = list(objs)
        deleted, counts, _, protected = super().get_deleted_objects(objs, request)
        refused = any(not self.has_delete_permission(request, obj) for obj in objs)
        return deleted, counts, {self.opts.verbose_name} if refused else set(), protected

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_with_service(request.user, obj)

    @transaction.atomic
    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self.delete_with_service(request.user, obj)
