"""Reads of documents."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from .models import Document, Page


def documents_for(*, owner: AbstractBaseUser) -> QuerySet[Document]:
    return Document.objects.filter(owner=owner).order_by("-created_at", "-id")


def document_pages(*, document: Document) -> QuerySet[Page]:
    return Page.objects.filter(document=document).order_by("number")
