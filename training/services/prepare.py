"""Planning a job while its documents are still being read (#17.3): the parts `jobs._plan` uses.

A document's pages are stored as the extraction child reads them; its chunks are made as far
as they are final (`chunks.chunks_stable_for_document`: the same chunks a whole-text split
makes). Each planning pass gives the chunks it has not planned yet their batch's share of N:

* the job's per-type totals are `question_types.type_counts(job.question_types, N)`;
* the pass's cumulative target of a type is its total times the share of the job's text seen
  so far (chunk tokens so far over an estimate of the whole: a document being read counts
  its tokens so far scaled by its pages in the file over the pages its final chunks reach),
  held below `MAX_EARLY_SHARE` until every source is read, and never more than the total;
* the batch gets the target minus what is planned already; the last pass (every source read)
  gets exactly what remains, so the sum per type is the job's counts.

Several sources: they are planned together, in the job's order (documents by id, then
conversations). Ready documents and conversations count at their size; a pass waits (plans
nothing) while any document has no final chunk yet to estimate its size from (not started,
or its first pages not read).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from conversations.models import Conversation
from documents.models import Document

from ..models import Chunk, TrainingJob, WorkItem
from .chunks import chunks_ensure_for_conversation, chunks_ensure_for_document, chunks_stable_for_document

# Until the last page is read, planning gives out at most this share of N: the estimate of the
# text still to come is rough (a long appendix, blank pages), and the last pass must have
# something left for the chunks only the end of the text settles.
MAX_EARLY_SHARE = 0.97

SourceKey = tuple[int | None, int | None]


@dataclass(frozen=True)
class SourceChunks:
    """A source's chunks that are final so far, whether that is all of them, and an estimate
    of its tokens in chunks once read (None: nothing to estimate from yet)."""

    chunks: list[Chunk]
    complete: bool
    estimate: float | None


def document_chunks(document: Document) -> SourceChunks:
    """The final chunks of a document, read or being read; a failed one is a ValidationError."""
    if document.status == Document.Status.FAILED:
        raise ValidationError(f"The document '{document.title}' could not be read: {document.error}")
    if document.status == Document.Status.READY:
        chunks = chunks_ensure_for_document(document=document)
        return SourceChunks(chunks, True, float(_tokens(chunks)))
    if not document.pages_extracted:
        return SourceChunks([], False, None)
    chunks, last_page = chunks_stable_for_document(document=document)
    if not chunks or not last_page:
        return SourceChunks(chunks, False, None)
    pages = max(document.page_count, last_page)
    return SourceChunks(chunks, False, _tokens(chunks) * pages / last_page)


def conversation_chunks(conversation: Conversation) -> SourceChunks:
    chunks = chunks_ensure_for_conversation(conversation=conversation)
    return SourceChunks(chunks, True, float(_tokens(chunks)))


def _tokens(chunks: Sequence[Chunk]) -> int:
    return sum(chunk.token_count for chunk in chunks)


def seen_share(sources: Sequence[SourceChunks]) -> float | None:
    """The share of the job's text its final chunks hold: 1 once every source is read, None
    while a source's size cannot be estimated yet."""
    if all(source.complete for source in sources):
        return 1.0
    if any(source.estimate is None for source in sources):
        return None
    estimate = sum(source.estimate or 0.0 for source in sources)
    if estimate <= 0:
        return None
    seen = sum(_tokens(source.chunks) for source in sources)
    return min(MAX_EARLY_SHARE, seen / estimate)


def source_key(chunk: Chunk) -> SourceKey:
    return chunk.document_id, chunk.conversation_id


def planned_so_far(job: TrainingJob) -> tuple[dict[SourceKey, int], Counter[str]]:
    """Per source, the last chunk index the job's items cover (chunks up to it are planned,
    those given nothing included); and the pairs planned per question type."""
    covered: dict[SourceKey, int] = {}
    planned: Counter[str] = Counter()
    rows = WorkItem.objects.filter(job=job).values_list(
        "chunk__document_id", "chunk__conversation_id", "chunk__index", "span", "question_type", "quota"
    )
    for document_id, conversation_id, index, span, question_type, quota in rows:
        key = (document_id, conversation_id)
        covered[key] = max(covered.get(key, -1), index + max(span, 1) - 1)
        planned[question_type] += quota
    return covered, planned


def unplanned(sources: Sequence[SourceChunks], covered: Mapping[SourceKey, int]) -> list[Chunk]:
    """The final chunks past what the job's items cover, in the job's order."""
    return [
        chunk
        for source in sources
        for chunk in source.chunks
        if chunk.index > covered.get(source_key(chunk), -1)
    ]


def batch_counts(
    totals: Mapping[str, int], planned: Mapping[str, int], share: float, *, last: bool
) -> dict[str, int]:
    """Pairs of each type this pass plans: the type's cumulative target (`share` of its total,
    all of it in the `last` pass) minus what is planned already, never below 0.

    The last pass plans exactly what remains of N in all: if earlier batches were given another
    type than asked (a multi-hop count falls back to factual in a batch without neighbouring
    chunks), the types planned beyond their totals make the others' counts smaller, largest
    first, so the job still asks for exactly N."""
    counts = {
        key: max(0, (total if last else math.floor(total * share)) - planned.get(key, 0))
        for key, total in totals.items()
    }
    if last:
        excess = sum(counts.values()) - max(0, sum(totals.values()) - sum(planned.values()))
        for key in sorted(counts, key=lambda k: -counts[k]):
            cut = min(excess, counts[key])
            counts[key] -= cut
            excess -= cut
    return {key: n for key, n in counts.items() if n > 0}
