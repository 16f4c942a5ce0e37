"""Every status write of jobs and work items, for live and batch generation alike.

The job's statuses move only along `TrainingJob.TRANSITIONS` (`job_transition`: one
conditional UPDATE; zero rows changed means someone else got there first). A work item
is claimed with a lease and a claim number (its `attempts`); every later write of that
run is conditional on the claim number, so a worker whose lease was taken over writes
nothing.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from .. import hotsql
from ..models import Completion, TrainingJob, WorkItem
from ..validation import describe_reasons
from . import handoff

if TYPE_CHECKING:
    from .replies import Progress

Status = TrainingJob.Status


# --- jobs ---------------------------------------------------------------------------------


def job_transition(job_id: int, source: Sequence[str], target: str, **fields: Any) -> bool:
    """Move a job between statuses only along the documented transitions."""
    for status in source:
        if target not in TrainingJob.TRANSITIONS[status]:
            raise ValueError(f"job transition {status} → {target} is not allowed")
    updated = TrainingJob.objects.filter(pk=job_id, status__in=list(source)).update(status=target, **fields)
    return updated == 1


def job_fail(*, job_id: int, error: str) -> bool:
    now = timezone.now()
    failed = job_transition(
        job_id, [Status.QUEUED, Status.CHUNKING, Status.GENERATING], Status.FAILED, error=error, finished_at=now
    )
    if failed:
        WorkItem.objects.filter(job_id=job_id, status__in=[WorkItem.Status.PENDING, WorkItem.Status.RUNNING]).update(
            status=WorkItem.Status.CANCELLED
        )
    return failed


def _count_chunks_done(job_id: int) -> None:
    finished = (
        WorkItem.objects.filter(job_id=OuterRef("pk"))
        .exclude(status__in=[WorkItem.Status.PENDING, WorkItem.Status.RUNNING])
        .order_by()
        .values("job_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    TrainingJob.objects.filter(pk=job_id).update(chunks_done=Coalesce(Subquery(finished), 0))


def job_finish_if_done(*, job_id: int, chunks_counted: bool = False) -> bool:
    """Close a job once none of its work items can still make completions.

    `chunks_counted`: the caller closed its item and added it to `chunks_done` already
    (the count is then taken again only when the job finishes).
    """
    if not chunks_counted:
        _count_chunks_done(job_id)
    if hotsql.has_open_items(job_id):
        return False
    if chunks_counted:
        _count_chunks_done(job_id)
    job = TrainingJob.objects.get(pk=job_id)
    if job.status != Status.GENERATING:
        return False
    created = Completion.objects.filter(job_id=job_id).count()
    reasons: Counter[str] = Counter()
    errors: list[str] = []
    for item in WorkItem.objects.filter(job_id=job_id).only("reasons", "error", "status"):
        reasons.update(item.reasons or {})
        if item.error:
            errors.append(item.error)
    planned = sum(WorkItem.objects.filter(job_id=job_id).values_list("quota", flat=True))
    if planned < job.requested_count:
        reasons["source_exhausted"] += job.requested_count - planned
    shortfall = max(0, job.requested_count - created)
    now = timezone.now()
    if created == 0 and errors:
        return job_transition(
            job_id, [Status.GENERATING], Status.FAILED, error=errors[0], finished_at=now, created_count=created
        )
    summary: dict[str, Any] = {key: n for key, n in reasons.items() if n}
    if shortfall and errors:
        summary["errors"] = sorted(set(errors))[:5]
    return job_transition(
        job_id,
        [Status.GENERATING],
        Status.COMPLETED,
        finished_at=now,
        created_count=created,
        shortfall=shortfall,
        shortfall_reasons=summary,
        error=(f"Made {created} of {job.requested_count}: {describe_reasons(reasons)}" if shortfall else ""),
    )


def job_state(job_id: int) -> tuple[bool, bool]:
    """Whether the job still runs and whether it has reached its budget (one query)."""
    row = TrainingJob.objects.filter(pk=job_id).values_list("status", "budget", "cost").first()
    if row is None:
        return False, False
    status, budget, cost = row
    return status in TrainingJob.ITEMS_RUN, budget is not None and cost >= budget


def job_over_budget(job_id: int) -> bool:
    return job_state(job_id)[1]


# --- work items: live claims ------------------------------------------------------------------


def item_claim(item_id: int) -> tuple[WorkItem, int, tuple[int, int]] | None:
    """Take a work item with a lease: the item (with its job and chunk), the claim number,
    and the job's pending and running items just after the claim.

    None if it is not ours to take (done, or running under someone else's lease). The
    claim is one compare-and-set UPDATE; the claim number makes every later write of this
    run conditional on nobody having taken the item over since.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    claim = hotsql.claim(item_id, now=now, lease_until=lease)
    if claim is None:
        return None
    loaded = hotsql.work_item(item_id)
    if loaded is None:  # deleted (with its job) since the claim
        return None
    item, pending, running = loaded
    return item, claim, (pending, running)


def item_hand_back(item: WorkItem, claim: int, countdown: float, **fields: object) -> None:
    """Release the claim: the item is pending again, due in `countdown` seconds."""
    WorkItem.objects.filter(pk=item.pk, attempts=claim).update(
        status=WorkItem.Status.PENDING,
        lease_expires_at=None,
        enqueued_at=timezone.now() + timedelta(seconds=countdown),
        **fields,
    )


def item_renew(item_id: int, claim: int) -> bool:
    lease = timezone.now() + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    return (
        WorkItem.objects.filter(pk=item_id, attempts=claim, status=WorkItem.Status.RUNNING).update(
            lease_expires_at=lease
        )
        == 1
    )


# --- work items: batch claims -----------------------------------------------------------------


def item_claim_pending(item_id: int, *, round_number: int | None = None) -> int | None:
    """Claim a pending item for batch mode (for one round's result: at most once per round)."""
    item = WorkItem.objects.filter(pk=item_id).only("attempts").first()
    if item is None:
        return None
    pending = WorkItem.objects.filter(pk=item_id, status=WorkItem.Status.PENDING, attempts=item.attempts)
    fields: dict[str, object] = {}
    if round_number is not None:
        pending = pending.filter(batch_round__lt=round_number)
        fields["batch_round"] = round_number
    claim = item.attempts + 1
    lease = timezone.now() + timedelta(seconds=settings.MASSCER_BATCH_LEASE_SECONDS)
    updated = pending.update(status=WorkItem.Status.RUNNING, attempts=claim, lease_expires_at=lease, **fields)
    return claim if updated == 1 else None


def items_claim_pending(job_id: int) -> list[tuple[WorkItem, int]]:
    """Claim every pending item of a batch-mode job (with its job and chunk)."""
    claimed = []
    for item_id in WorkItem.objects.filter(job_id=job_id, status=WorkItem.Status.PENDING).values_list("pk", flat=True):
        claim = item_claim_pending(item_id)
        if claim is not None:
            claimed.append((WorkItem.objects.select_related("job", "chunk").get(pk=item_id), claim))
    return claimed


# --- work items: closing a claim --------------------------------------------------------------


def item_close(item_id: int, claim: int, status: str, **fields: object) -> bool:
    """Close a claimed item; False if the claim no longer holds it."""
    updated = WorkItem.objects.filter(pk=item_id, attempts=claim, status=WorkItem.Status.RUNNING).update(
        status=status, lease_expires_at=None, **fields
    )
    return updated == 1


def item_fail_model(item: WorkItem, claim: int, error: str) -> None:
    """Close a claimed item as failed by the model (the job is finished by the caller)."""
    reasons = Counter(item.reasons or {})
    reasons["model_error"] += 1
    item_close(item.pk, claim, WorkItem.Status.FAILED, error=error, reasons=dict(reasons))


@transaction.atomic
def item_close_done(item: WorkItem, claim: int, progress: Progress) -> str:
    """Close a claimed item as done, recording why it fell short (calls or cost budget).

    What a short item could not make goes to other chunks of the job in the same
    transaction (`handoff`); "shortfall" only when some of it found no chunk to take it.
    """
    # Nobody changes a claimed item's quota, but a batch caller's copy may predate its claim.
    quota = WorkItem.objects.filter(pk=item.pk).values_list("quota", flat=True).first()
    item.quota = item.quota if quota is None else quota
    missing = max(0, item.quota - progress.made)
    reasons = Counter(item.reasons or {})
    if missing and not progress.exhausted:
        reasons["budget_exhausted" if progress.budget_exhausted else "calls_exhausted"] += 1
    fields: dict[str, object] = {"reasons": dict(reasons)} if reasons != Counter(item.reasons or {}) else {}
    if not item_close(item.pk, claim, WorkItem.Status.DONE, **fields):
        return "lost-lease"
    moved = 0
    if missing and handoff.can_hand_on(item, progress):
        moved = handoff.hand_on_missing(item, missing, reasons)
        # The item is closed (ours until commit): its quota is now what it made plus what stayed.
        WorkItem.objects.filter(pk=item.pk).update(quota=item.quota - moved, reasons=dict(reasons))
        item.quota -= moved
    item.reasons = dict(reasons)
    return "done" if missing == moved else "shortfall"


def item_finish(item: WorkItem, claim: int, progress: Progress) -> str:
    """End a live run of a claimed item: close it as done (unless its last pairs did) and the job if it is."""
    if progress.closed:
        # Closed with its last pairs (and counted in the job's chunks_done there).
        job_finish_if_done(job_id=item.job_id, chunks_counted=True)
        return "done"
    outcome = item_close_done(item, claim, progress)
    job_finish_if_done(job_id=item.job_id)
    return outcome
