"""Moving the pairs a work item could not make to other chunks of its job.

Neighbouring chunks overlap, so they tend to offer the same questions; a chunk whose calls
run out on rejected (duplicate, invalid) replies would leave its quota undelivered while
other chunks have unused text. When an item ends short, its missing pairs go to items of
the same job that can still give more: pending ones get a larger quota (the run that
claims them reads it), done ones that made their whole quota and have calls left are sent
back to work with the extra pairs. Shares follow each receiver's unused text
(`planning.hand_on`: largest remainder, never beyond what its text can give).

It ends: an item that ended short (or handed pairs on, or was stopped) never receives, so
each item hands on at most once, and what nobody can take stays a shortfall, recorded as
`chunks_exhausted`. Mining jobs keep their quotas (a conversation holds the questions it
holds), and a job that reached its cost budget hands nothing on.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from ..models import TrainingJob, WorkItem
from ..planning import calls_budget, hand_on, pair_room
from ..tasks import generate_task
from .spans import SPAN_FIELDS, span_tokens

if TYPE_CHECKING:
    from .replies import Progress

# An item with one of these reasons ended short or was stopped: it takes no more pairs.
SPENT = frozenset(
    {"calls_exhausted", "budget_exhausted", "model_error", "cancelled", "quota_moved", "chunks_exhausted"}
)


@dataclass(frozen=True)
class Receiver:
    pk: int
    status: str
    quota: int
    room: int


def can_hand_on(item: WorkItem, progress: Progress) -> bool:
    return (
        settings.MASSCER_HAND_ON_SHORTFALL
        and item.job.style == TrainingJob.Style.SYNTHESIZE
        and not progress.budget_exhausted
        and not progress.exhausted
    )


def _calls_left(quota: int, calls: int) -> bool:
    budget = calls_budget(
        quota, per_call=settings.MASSCER_PAIRS_PER_CALL, calls_per_batch=settings.MASSCER_CALLS_PER_BATCH
    )
    return calls < budget


def _candidates(item: WorkItem) -> list[Receiver]:
    """The job's other items that can still give more, with their unused room (in pairs)."""
    rows = list(
        WorkItem.objects.filter(job_id=item.job_id, status__in=[WorkItem.Status.PENDING, WorkItem.Status.DONE])
        .filter(question_type=item.question_type)  # same kind only: the job's type mix stays as asked
        .exclude(pk=item.pk)
        .order_by("chunk__document_id", "chunk__conversation_id", "chunk__index")
        .values_list("pk", "status", "quota", "made", "calls", "reasons", *SPAN_FIELDS)
    )
    # An item's unused text is its span's: all the chunks it reads.
    tokens_of = span_tokens((row[0], *row[6:]) for row in rows)
    found = []
    for pk, status, quota, made, calls, reasons, *_ in rows:
        tokens = tokens_of[pk]
        if SPENT.intersection(key for key, n in (reasons or {}).items() if n):
            continue
        if status == WorkItem.Status.DONE and (made < quota or not _calls_left(quota, calls)):
            continue
        room = pair_room(tokens, quota)
        if room > 0:
            found.append(Receiver(pk, status, quota, room))
    return found


def receivers(item: WorkItem, missing: int) -> list[tuple[Receiver, int]]:
    """Who takes how many of `missing` pairs (nobody once the job has stopped)."""
    if not TrainingJob.objects.filter(pk=item.job_id, status__in=TrainingJob.ITEMS_RUN).exists():
        return []
    candidates = _candidates(item)
    shares = hand_on(missing, [c.room for c in candidates])
    return [(c, share) for c, share in zip(candidates, shares, strict=True) if share > 0]


def give(job: TrainingJob, shares: list[tuple[Receiver, int]]) -> int:
    """Raise the receivers' quotas (each a conditional UPDATE: a receiver that changed since it
    was read takes nothing); done ones go back to work. How many pairs were placed."""
    placed = 0
    reopened: list[int] = []
    now = timezone.now()
    for receiver, share in shares:
        same = WorkItem.objects.filter(pk=receiver.pk, status=receiver.status, quota=receiver.quota)
        if receiver.status == WorkItem.Status.PENDING:
            updated = same.update(quota=F("quota") + share)
        else:
            updated = same.filter(made__gte=receiver.quota).update(
                status=WorkItem.Status.PENDING, quota=F("quota") + share, enqueued_at=now, lease_expires_at=None
            )
            if updated:
                reopened.append(receiver.pk)
        placed += share * updated
    if job.mode == TrainingJob.Mode.LIVE:
        for item_id in reopened:
            generate_task.delay_on_commit(item_id)
    # Batch mode: the next round asks every pending item, the reopened ones too.
    return placed


def hand_on_missing(item: WorkItem, missing: int, reasons: Counter[str]) -> int:
    """Move `missing` pairs of a closed item to other chunks; how many moved. `reasons` gets
    `quota_moved` for those and `chunks_exhausted` for the rest."""
    placed = give(item.job, receivers(item, missing))
    if placed:
        reasons["quota_moved"] += placed
    if missing > placed:
        reasons["chunks_exhausted"] += missing - placed
    return placed
