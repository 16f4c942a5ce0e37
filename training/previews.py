"""What the splitter will make of a conversation not trained yet, split once and kept in the cache.

Splitting a 100,000-message conversation takes seconds, and the chunk preview, the Train dialog
and its estimate each asked for it again on every request. The split is now kept in Django's
cache under a key that names the conversation, its content version (its `updated_at`, which
`message_add` and `conversation_update` bump, and its last message position) and the chunk
budget and overlap: a new message makes a new key, so nothing is ever served stale and old
entries simply expire. Kept: one small shape (tokens and user questions per chunk) for the
estimate, and the chunks' texts page by page for the preview, so a page reads 20 chunks, not
the whole conversation's text.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.paginator import Page, Paginator
from django.db.models import Max

from conversations.chunking import ConvChunkSpec, conversation_chunk_specs
from conversations.models import Conversation, Message

from .estimate import user_turns

PER_PAGE = 20
# Chunk texts are kept this many to a cache key (a whole number of pages), compressed: a
# 100,000-message conversation is about 10 MB of chunk text.
BOOK = 10 * PER_PAGE
# Long enough to cover a working session; a changed conversation gets new keys anyway.
CACHE_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Shape:
    """One chunk of the preview, without its text: what the estimate needs."""

    tokens: int
    users: int


def conversation_version(conversation: Conversation) -> str:
    """Changes whenever a message is added (or the conversation edited through its services)."""
    last = Message.objects.filter(conversation=conversation).aggregate(last=Max("position"))["last"]
    budget, overlap = settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP
    return f"{conversation.pk}:{conversation.updated_at.timestamp():.6f}:{last}:{budget}:{overlap}"


def _key(version: str, part: str) -> str:
    return f"conversation-split:{version}:{part}"


def _book_of(index: int) -> str:
    return f"book-{index // BOOK}"


def _pack(specs: list[ConvChunkSpec]) -> bytes:
    rows = [[spec.index, spec.text, spec.token_count, spec.first, spec.last] for spec in specs]
    return zlib.compress(json.dumps(rows).encode("utf-8"))


def _unpack(packed: bytes) -> list[ConvChunkSpec]:
    return [ConvChunkSpec(*row) for row in json.loads(zlib.decompress(packed))]


def _split(conversation: Conversation, version: str) -> tuple[list[Shape], list[ConvChunkSpec]]:
    """Split once and store the shape and the texts, compressed, `BOOK` chunks to a key."""
    specs = conversation_chunk_specs(
        conversation, budget=settings.MASSCER_CHUNK_TOKENS, overlap=settings.MASSCER_CHUNK_OVERLAP
    )
    shapes = [Shape(spec.token_count, user_turns(spec.text)) for spec in specs]
    books = {
        _key(version, _book_of(start)): _pack(specs[start : start + BOOK]) for start in range(0, len(specs), BOOK)
    }
    cache.set_many({_key(version, "shape"): shapes, **books}, CACHE_SECONDS)
    return shapes, specs


def conversation_shape(conversation: Conversation) -> list[Shape]:
    """Tokens and user questions of each chunk the conversation would be split into."""
    version = conversation_version(conversation)
    shapes = cache.get(_key(version, "shape"))
    return shapes if shapes is not None else _split(conversation, version)[0]


def conversation_preview(conversation: Conversation, number: str | int | None) -> Page:
    """One page (of `PER_PAGE`) of the chunks the conversation would be split into, with texts."""
    version = conversation_version(conversation)
    shapes = cache.get(_key(version, "shape"))
    every: list[ConvChunkSpec] | None = None
    if shapes is None:
        shapes, every = _split(conversation, version)
    page = Paginator(shapes, PER_PAGE).get_page(number)
    page.object_list = _texts(conversation, version, every, page) if shapes else []
    return page


def _texts(conversation: Conversation, version: str, every: list[ConvChunkSpec] | None, page: Page) -> list[Any]:
    first, last = page.start_index() - 1, page.end_index()  # chunk indexes [first, last)
    if every is not None:
        return every[first:last]
    packed = cache.get(_key(version, _book_of(first)))
    if packed is None:
        # The texts fell out of the cache (a small local cache culls): split again, keep it all.
        return _split(conversation, version)[1][first:last]
    start = first // BOOK * BOOK
    return _unpack(packed)[first - start : last - start]
