"""Storing a claimed work item's accepted pairs: completions, assignments and the call's
counters, in one short transaction conditional on the claim."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Count

from .. import hotsql
from ..models import Assignment, Completion, WorkItem
from ..validation import Candidate, add_samples, pair_text


def store_completions(
    *,
    item: WorkItem,
    claim: int,
    pairs: Sequence[tuple[str, str, str]],
    model: str,
    redacted: bool,
    reasons: Counter[str],
    calls: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: Decimal | float = 0,
    start: int | Mapping[int, int] | None = None,
    agent_ids: Sequence[int] | None = None,
    close: bool = False,
    samples: Sequence[dict[str, str]] | None = None,
    duplicates: list[str] | None = None,
    judged: Sequence[dict[str, object] | None] | None = None,
    chunks: Sequence[int] | None = None,
) -> int:
    """Store accepted pairs for a claimed work item in one short transaction; the number stored.

    `claim` is the attempt number that claimed the item; if another worker has taken it
    over since (our lease expired), nothing is written and -1 is returned.

    A pair whose question the job already has (compared as `validation.question_key` does:
    another worker may have stored it since the caller's duplicate check) is skipped by the
    insert itself, so the check and the write are one step. It is counted as a `duplicate`
    rejection in `reasons` (the caller's counter too) and in the item's samples, is not in
    the returned number, and its question is appended to `duplicates` when that is given;
    an item it leaves short is not closed and tops up like after any rejected pair.

    `calls`, the token counts and `cost` are the model call(s) these pairs came from; they
    are added to the work item's and the job's counters in the same transaction (when -1
    is returned they are not: the caller records the call on its own).

    `chunks`, when given, is the chunk of the item's span each pair goes to (the one its
    evidence comes from, `spans.SpanSource.chunk_of`); else the item's own chunk. The item
    numbers the ordinals of its question type on each chunk of its span (the spans of one type
    are disjoint). `start` is where they go on: the chunk's number of completions of the type
    (an int: the item's own chunk; a mapping: per chunk) when the caller knows it, and
    `agent_ids` the job's agents (each saves a query); `close` closes the item as done in
    the same transaction and counts it in the job's `chunks_done`. `samples`, when given,
    replace the item's rejected-reply samples (the caller holds the claim, so it has the
    current list and adds to it). `judged`, when given, holds each pair's judge scores.
    """
    merged = Counter(item.reasons or {})
    merged.update(reasons)
    merged = +merged  # a change may take some away (spare pairs stored after all)
    homes = list(chunks) if chunks is not None else [item.chunk_id] * len(pairs)
    with transaction.atomic():
        starts = _starts(item, homes, start)
        following = dict(starts)
        rows = []
        for offset, ((question, answer, evidence), chunk_id) in enumerate(zip(pairs, homes, strict=True)):
            rows.append(
                Completion(
                    job_id=item.job_id,
                    chunk_id=chunk_id,
                    ordinal=following[chunk_id],
                    question=question,
                    answer=answer,
                    evidence=evidence,
                    model=model,
                    redacted=redacted,
                    question_type=item.question_type,
                    judge=judged[offset] if judged is not None else None,
                )
            )
            following[chunk_id] += 1
        try:
            # No savepoint (two round trips fewer per call): an IntegrityError marks the
            # outer transaction for rollback, which happens when this block is left.
            with transaction.atomic(savepoint=False):
                # Plain SQL, as bulk_create would write it, at a fraction of its CPU.
                hotsql.insert(rows, skip_on=("job", "question_key"))
        except IntegrityError:
            return -1
        stored = [row for row in rows if row.pk is not None]
        if len(stored) < len(rows):
            samples = _skipped_as_duplicates(rows, starts, merged, reasons, samples, item, duplicates)
            close = False
        # The item's update comes after the rows it counts, and its condition (the claim
        # number) rolls all of them back for a worker whose lease was taken over meanwhile.
        if not hotsql.item_stored(
            item.pk, claim, made=len(stored), calls=calls, reasons=dict(merged), close=close, samples=samples
        ):
            transaction.set_rollback(True)
            return -1
        if stored:
            if agent_ids is None:
                agent_ids = hotsql.job_agent_ids(item.job_id)
            hotsql.insert(
                [Assignment(completion=row, agent_id=agent_id) for row in stored for agent_id in agent_ids],
                ignore_conflicts=True,
            )
        hotsql.job_counted(
            item.job_id,
            created=len(stored),
            calls=calls,
            prompt_tokens=prompt_tokens if calls else 0,
            completion_tokens=completion_tokens if calls else 0,
            cost=Decimal(cost) if calls else Decimal(0),
            chunks_done=1 if close else 0,
        )
    item.reasons = dict(merged)
    if samples is not None:
        item.samples = list(samples)
    return len(stored)


def _starts(item: WorkItem, homes: Sequence[int], start: int | Mapping[int, int] | None) -> dict[int, int]:
    """The first free ordinal of the item's question type on each chunk the rows go to."""
    known = {item.chunk_id: start} if isinstance(start, int) else dict(start or {})
    unknown = set(homes) - set(known)
    if unknown:
        counted = (
            Completion.objects.filter(job_id=item.job_id, chunk_id__in=unknown, question_type=item.question_type)
            .values("chunk_id")
            .annotate(n=Count("pk"))
            .order_by()
        )
        known.update({chunk_id: 0 for chunk_id in unknown})
        known.update({row["chunk_id"]: row["n"] for row in counted})
    return known


def _skipped_as_duplicates(
    rows: list[Completion],
    starts: Mapping[int, int],
    merged: Counter[str],
    reasons: Counter[str],
    samples: Sequence[dict[str, str]] | None,
    item: WorkItem,
    duplicates: list[str] | None,
) -> Sequence[dict[str, str]] | None:
    """Account for the rows the insert skipped (the job has their questions); the samples to write.

    The stored rows of each chunk move down to the ordinals `start`, `start + 1`, ... of that
    chunk (the skipped ones left gaps, and the next call numbers on from the chunk's count).
    Only this item's claim writes its chunks' ordinals of its type, and each row moves to a
    lower one that is free by then.
    """
    following = dict(starts)
    skipped: list[Completion] = []
    for row in rows:
        if row.pk is None:
            skipped.append(row)
            continue
        ordinal = following[row.chunk_id]
        if row.ordinal != ordinal:
            Completion.objects.filter(pk=row.pk).update(ordinal=ordinal)
            row.ordinal = ordinal
        following[row.chunk_id] += 1
    merged["duplicate"] += len(skipped)
    reasons["duplicate"] += len(skipped)
    if duplicates is not None:
        duplicates.extend(row.question for row in skipped)
    found = [("duplicate", pair_text(Candidate(row.question, row.answer, row.evidence))) for row in skipped]
    added = add_samples(samples if samples is not None else item.samples or [], found)
    return added if added is not None else samples

