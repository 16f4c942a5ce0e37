"""The text a work item asks the model about: its span of consecutive chunks of one source.

A work item covers `span` chunks from `chunk` (`planning.group_spans` groups small chunks so
that one call asks for more pairs). The model sees the span's text once, without the overlaps
neighbouring chunks repeat, and evidence is checked against that text; each accepted pair is
then stored on the chunk of the span its evidence comes from (`SpanSource.chunk_of`), so a
completion's chunk, locator and highlighted evidence stay those of one chunk.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from masscer.lib.redact import redact
from masscer.lib.tokens import count_tokens

from ..models import Chunk, WorkItem
from ..validation import evidence_in_source

# Between two chunks of a document that do not touch (the splitter leaves out whitespace only).
GAP = "\n"
# Between two chunks of a conversation (each is whole turns; its context lines are labelled).
TURN_GAP = "\n\n"


@dataclass(frozen=True)
class SpanSource:
    """A work item's source as the model sees it (redacted when the job redacts)."""

    text: str
    chunk_ids: tuple[int, ...]
    # Each chunk's text as the model sees it, to attribute a pair's evidence to its chunk.
    parts: tuple[str, ...]
    # Tokens of `text` (the rate limiter's reservation).
    tokens: int

    def chunk_of(self, evidence: str) -> int:
        """The chunk a pair with this evidence belongs to: the first whose text holds it whole;
        for evidence across a boundary between two chunks, the one where it starts."""
        if len(self.chunk_ids) == 1:
            return self.chunk_ids[0]
        for chunk_id, part in zip(self.chunk_ids, self.parts, strict=True):
            if evidence_in_source(evidence, part):
                return chunk_id
        words = evidence.split()
        for length in range(len(words) - 1, 0, -1):  # the longest start of it that one chunk holds
            head = " ".join(words[:length])
            for chunk_id, part in zip(self.chunk_ids, self.parts, strict=True):
                if evidence_in_source(head, part):
                    return chunk_id
        return self.chunk_ids[0]


def span_chunks(item: WorkItem) -> list[Chunk]:
    """The item's chunks in order (its own `chunk` first)."""
    first = item.chunk
    if item.span <= 1:
        return [first]
    rows = Chunk.objects.filter(
        document_id=first.document_id,
        conversation_id=first.conversation_id,
        source_version=first.source_version,
        index__gte=first.index,
        index__lt=first.index + item.span,
    ).order_by("index")
    return list(rows)


def span_source(item: WorkItem) -> SpanSource:
    """The item's source, read once per loaded item (its span does not change while it runs)."""
    cached: SpanSource | None = getattr(item, "_span_source", None)
    if cached is None:
        cached = _load(item)
        item._span_source = cached  # type: ignore[attr-defined]
    return cached


def _load(item: WorkItem) -> SpanSource:
    chunks = span_chunks(item)
    hide = item.job.redact
    text = joined_text(chunks)
    shown = redact(text)[0] if hide else text
    if len(chunks) == 1:
        tokens = count_tokens(shown) if hide else chunks[0].token_count
        return SpanSource(shown, (chunks[0].pk,), (shown,), tokens)
    parts = tuple(redact(chunk.text)[0] if hide else chunk.text for chunk in chunks)
    return SpanSource(shown, tuple(chunk.pk for chunk in chunks), parts, count_tokens(shown))


def joined_text(chunks: list[Chunk]) -> str:
    """The chunks' text read once: a document's chunks by their offsets in its text (the part
    a chunk repeats of the one before is left out); a conversation's one after the other."""
    if not _has_offsets(chunks):
        return TURN_GAP.join(chunk.text for chunk in chunks)
    text, end = chunks[0].text, chunks[0].end
    for chunk in chunks[1:]:
        if chunk.start < end:
            text += chunk.text[end - chunk.start :]
        else:
            text += (GAP if chunk.start > end else "") + chunk.text
        end = chunk.end
    return text


def _has_offsets(chunks: list[Chunk]) -> bool:
    """Whether the chunks are a document's with usable offsets (rows from before offsets have none)."""
    if not chunks[0].document_id:
        return False
    ordered = all(a.start < b.start and a.end < b.end for a, b in zip(chunks, chunks[1:], strict=False))
    return ordered and all(chunk.end - chunk.start == len(chunk.text) for chunk in chunks)


def span_label(item: WorkItem) -> str:
    """Which chunks the item reads, e.g. "chunks 3–4" (numbered from 1, as the document's chunks page does)."""
    first = item.chunk.index + 1
    if item.span <= 1:
        return f"chunk {first}"
    return f"chunks {first}–{first + item.span - 1}"


# The values of a work item `span_tokens` reads.
SPAN_FIELDS = (
    "chunk__document_id",
    "chunk__conversation_id",
    "chunk__source_version",
    "chunk__index",
    "span",
    "chunk__token_count",
)


def span_tokens(rows: Iterable[tuple[int, int | None, int | None, str, int, int, int]]) -> dict[int, int]:
    """Tokens of each item's span from (item id, document id, conversation id, source version,
    first index, span, first chunk's tokens) rows: one query per source with a longer span."""
    found: dict[int, int] = {}
    longer: dict[tuple[int | None, int | None, str], list[tuple[int, int, int]]] = {}
    for pk, document_id, conversation_id, version, first, span, tokens in rows:
        found[pk] = tokens
        if span > 1:
            longer.setdefault((document_id, conversation_id, version), []).append((pk, first, span))
    for (document_id, conversation_id, version), items in longer.items():
        sizes = dict(
            Chunk.objects.filter(
                document_id=document_id, conversation_id=conversation_id, source_version=version
            ).values_list("index", "token_count")
        )
        for pk, first, span in items:
            found[pk] = sum(sizes.get(index, 0) for index in range(first, first + span))
    return found
