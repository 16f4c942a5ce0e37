"""Reads of documents."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from workspaces.selectors import visible_to

from .models import Document, Page


def documents_for(*, user: AbstractBaseUser) -> QuerySet[Document]:
    return visible_to(Document.objects.all(), user=user).order_by("-created_at", "-id")


def document_pages(*, document: Document) -> QuerySet[Page]:
    return Page.objects.filter(document=document).order_by("number")
