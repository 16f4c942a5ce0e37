"""Splitting a job's sources into chunks, once per document or conversation."""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import transaction

from conversations.chunking import conversation_chunk_specs
from conversations.models import Conversation
from documents.models import Document
from masscer.lib.tokens import chunk_pages

from .. import estimate
from ..models import Chunk
from ..previews import conversation_version


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunks_ensure_for_document(*, document: Document) -> list[Chunk]:
    """Split a ready document once; later calls return the stored chunks."""
    existing = list(Chunk.objects.filter(document=document).order_by("index"))
    if existing:
        return existing
    texts = list(document.pages.order_by("number").values_list("text", flat=True))
    specs = chunk_pages(texts, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP)
    rows = [
        Chunk(
            document=document,
            index=spec.index,
            text=spec.text,
            token_count=spec.token_count,
            locator={"pages": [spec.first_page, spec.last_page]},
            start=spec.start,
            end=spec.end,
            content_hash=_hash(spec.text),
        )
        for spec in specs
    ]
    with transaction.atomic():
        # Two workers may chunk the same document at once; the unique index keeps one set.
        Chunk.objects.bulk_create(rows, ignore_conflicts=True)
        Document.objects.filter(pk=document.pk).update(chunk_count=len(rows))
    return list(Chunk.objects.filter(document=document).order_by("index"))


def chunks_ensure_for_conversation(*, conversation: Conversation, redact: bool = False) -> list[Chunk]:
    """Split a conversation once per version of it; later calls return the stored chunks.

    A conversation that grew since it was last split (a logged chat, an added message) is split
    again, so a job trains on all of it; the older chunks stay for the completions made from them.
    """
    version = conversation_version(conversation)
    existing = list(Chunk.objects.filter(conversation=conversation, source_version=version).order_by("index"))
    if existing:
        return existing
    specs = conversation_chunk_specs(
        conversation, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP
    )
    rows = [
        Chunk(
            conversation=conversation,
            index=spec.index,
            text=spec.text,
            token_count=spec.token_count,
            locator={"messages": [spec.first, spec.last]},
            content_hash=_hash(spec.text),
            source_version=version,
        )
        for spec in specs
    ]
    Chunk.objects.bulk_create(rows, ignore_conflicts=True)
    return list(Chunk.objects.filter(conversation=conversation, source_version=version).order_by("index"))


def user_turns(chunk: Chunk) -> int:
    """User questions in a conversation chunk (what "mine" can use)."""
    return estimate.user_turns(chunk.text)
