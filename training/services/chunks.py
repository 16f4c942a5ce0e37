"""Splitting a job's sources into chunks, once per document or conversation; a document still
being read is split as far as its pages are final (`chunks_stable_for_document`)."""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import transaction

from conversations.chunking import conversation_chunk_specs
from conversations.models import Conversation
from documents.models import Document
from masscer.lib.tokens import PIECE_CHARS, ChunkSpec, chunk_pages, count_tokens, join_pages

from .. import estimate
from ..models import Chunk
from ..previews import conversation_version

# How far before the end of the text read so far a chunk's look-ahead must stop for the chunk
# to be final: the text's last encoding piece (its token offsets change as text follows),
# a heading line's look-ahead (100 characters) and room to spare.
STABLE_MARGIN_CHARS = PIECE_CHARS + 512
# Counting a slice on its own may differ from the whole text's encoding by a few tokens at
# its ends and its piece cuts.
_TOKEN_SLACK = 32


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunks_ensure_for_document(*, document: Document) -> list[Chunk]:
    """Split a ready document once; later calls return the stored chunks.

    A document whose first chunks were made while it was read (`chunks_stable_for_document`)
    gets the rest here; those made early are the same as a whole-text split makes them.
    """
    existing = list(Chunk.objects.filter(document=document).order_by("index"))
    if existing and not document.chunks_partial:
        return existing
    texts = list(document.pages.order_by("number").values_list("text", flat=True))
    specs = chunk_pages(texts, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP)
    with transaction.atomic():
        # Two workers may chunk the same document at once; the unique index keeps one set.
        Chunk.objects.bulk_create(_rows(document, specs[len(existing) :]), ignore_conflicts=True)
        Document.objects.filter(pk=document.pk).update(chunk_count=len(specs), chunks_partial=False)
    return list(Chunk.objects.filter(document=document).order_by("index"))


def chunks_stable_for_document(*, document: Document) -> tuple[list[Chunk], int]:
    """The chunks of a document being read that are final already, and the last page they
    reach (0: none yet). Made from the pages stored so far (`stable_chunk_specs`), once each."""
    existing = list(Chunk.objects.filter(document=document).order_by("index"))
    texts = _first_pages(document)
    specs = stable_chunk_specs(
        texts, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP, known=len(existing)
    )
    if len(specs) > len(existing):
        with transaction.atomic():
            Chunk.objects.bulk_create(_rows(document, specs[len(existing) :]), ignore_conflicts=True)
            Document.objects.filter(pk=document.pk).update(chunks_partial=True)
        existing = list(Chunk.objects.filter(document=document).order_by("index"))
    last_page = existing[-1].locator["pages"][1] if existing else 0
    return existing, last_page


def _first_pages(document: Document) -> list[str]:
    """The texts of pages 1, 2, ... as far as they are stored without a gap."""
    texts: list[str] = []
    for number, text in document.pages.order_by("number").values_list("number", "text"):
        if number != len(texts) + 1:
            break
        texts.append(text)
    return texts


def stable_chunk_specs(pages: list[str], *, budget: int, overlap: int, known: int = 0) -> list[ChunkSpec]:
    """The chunks of a document's first `pages` that splitting the whole document makes too,
    whatever pages follow (the first `known` are taken as checked already).

    The splitter (`tokens.chunk_pages`) is greedy: a chunk depends only on where it starts and
    on the text it looks at, at most `budget` tokens on (plus a heading's line) and its token
    offsets, which are the whole text's wherever the text is encoded in the same pieces, i.e.
    before the last PIECE_CHARS of what is known. A chunk whose look-ahead ends before that
    margin is final, and so the next one starts where it will in the whole text.
    """
    specs = chunk_pages(pages, budget=budget, overlap=overlap)
    text, _ = join_pages(pages)
    horizon = len(text.rstrip()) - STABLE_MARGIN_CHARS
    stable = specs[:known]
    for spec in specs[known:]:
        if not _settled(text, spec.start, horizon, budget):
            break
        stable.append(spec)
    return stable


def _settled(text: str, start: int, horizon: int, budget: int) -> bool:
    """Whether `budget` tokens from `start` (with room for encoding differences at the edges
    of the piece counted) end before `horizon`."""
    needed = budget + _TOKEN_SLACK
    window = budget * 6
    while start + window < horizon:
        if count_tokens(text[start : start + window]) >= needed:
            return True
        window *= 2
    return horizon > start and count_tokens(text[start:horizon]) >= needed


def _rows(document: Document, specs: list[ChunkSpec]) -> list[Chunk]:
    return [
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
