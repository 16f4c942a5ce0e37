"""Spare pairs kept by the items that did not need them, for an item the last wave left short.

In the last wave of a live job every call asks for a spare pair or two (`generation._spare`).
Most come back unused: the item made its quota without them. An item whose reply lost more
pairs than its spares covered (near duplicates of questions other chunks stored while its
call was out, most often) would need a second call after everything else, a whole model
latency added to the job. Instead:

* an item that closes full keeps its valid unused pairs (`bank`: in its `batch_state`, with
  the model that wrote them); they are paid for and were checked against its own text;
* the short item takes what it misses from those banks (`borrow`): for each done item of its
  job and question type with a bank, in one transaction, it takes that item's claim, screens
  the banked pairs again against the job's questions (which may have grown since), stores
  the new ones as that item's completions (on that item's chunks: their evidence is there),
  raises that item's quota by as many and lowers its own. Nothing is called; the job still
  asks for exactly N, and a pair still belongs to the chunk whose text holds its evidence.

A judged job keeps no bank (a spare has no judge scores); batch jobs have no spares.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..models import WorkItem
from ..validation import Candidate, screen
from . import completions, spans

if TYPE_CHECKING:
    from .replies import Progress

logger = logging.getLogger(__name__)

# The most pairs an item keeps: a reply rarely loses more than a couple.
MAX_BANKED = 5
BANK_KEY = "spares"


def bank(item: WorkItem, claim: int, pairs: list[Candidate], model: str) -> None:
    """Keep a full item's unused valid pairs (it has just closed under `claim`)."""
    if not pairs:
        return
    kept = {"model": model, "pairs": [[c.question, c.answer, c.evidence] for c in pairs[:MAX_BANKED]]}
    state = {**(item.batch_state or {}), BANK_KEY: kept}
    # Only while nobody has taken the item again since it closed (a hand-off may reopen it).
    if WorkItem.objects.filter(pk=item.pk, attempts=claim, status=WorkItem.Status.DONE).update(batch_state=state):
        item.batch_state = state


def _banked(state: Any) -> tuple[str, list[Candidate]]:
    kept = (state or {}).get(BANK_KEY) or {}
    pairs = [Candidate(*map(str, pair)) for pair in kept.get("pairs", []) if isinstance(pair, list) and len(pair) == 3]
    return str(kept.get("model", "")), pairs


def borrow(item: WorkItem, claim: int, progress: Progress, missing: int) -> int:
    """Take up to `missing` pairs from other items' banks for `item` (claimed under `claim`);
    how many were stored. The item's quota (in the database and on `item`) is lowered by as
    many, so its run ends with what it made."""
    if missing <= 0 or progress.shared is None:
        return 0
    lenders = (
        WorkItem.objects.filter(job_id=item.job_id, question_type=item.question_type, status=WorkItem.Status.DONE)
        .exclude(pk=item.pk)
        .filter(batch_state__has_key=BANK_KEY)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    lent = 0
    for lender_id in lenders:
        if lent >= missing:
            break
        lent += _borrow_from(item, claim, progress, lender_id, missing - lent)
    if lent:
        item.quota -= lent
        logger.info("work item %s took %d pair(s) from other items' spares instead of calling again", item.pk, lent)
    return lent


def _borrow_from(item: WorkItem, claim: int, progress: Progress, lender_id: int, wanted: int) -> int:
    lender = WorkItem.objects.select_related("job", "chunk").filter(pk=lender_id).first()
    if lender is None or lender.status != WorkItem.Status.DONE:
        return 0
    model, pairs = _banked(lender.batch_state)
    source = spans.span_source(lender)
    shared = progress.shared
    assert shared is not None
    shared.refresh(max_age=0.0)  # the job's questions as they are now
    accepted, _ = screen(pairs, source=source.text, index=progress.index, wanted=wanted)
    rest = {key: value for key, value in (lender.batch_state or {}).items() if key != BANK_KEY}
    with transaction.atomic():
        # The lender's claim: only the holder of an item's claim writes its chunks' ordinals.
        lease = timezone.now() + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
        taken = WorkItem.objects.filter(pk=lender.pk, status=WorkItem.Status.DONE, attempts=lender.attempts).update(
            status=WorkItem.Status.RUNNING, attempts=F("attempts") + 1, lease_expires_at=lease
        )
        if not taken:
            return 0
        lender_claim = lender.attempts + 1
        stored = 0
        if accepted:
            stored = completions.store_completions(
                item=lender,
                claim=lender_claim,
                pairs=[(c.question, c.answer, c.evidence) for c in accepted],
                model=model or lender.job.model,
                redacted=lender.job.redact,
                reasons=Counter({"spare_unused": -len(accepted)}),
                agent_ids=shared.agents(),
                chunks=[source.chunk_of(c.evidence) for c in accepted],
            )
            if stored < 0:
                transaction.set_rollback(True)
                return 0
        # The lender is done again, its quota what it made, its bank spent (what the screen
        # turned down would be turned down again).
        WorkItem.objects.filter(pk=lender.pk, attempts=lender_claim).update(
            status=WorkItem.Status.DONE, lease_expires_at=None, quota=F("quota") + stored, batch_state=rest
        )
        if stored:
            reasons = Counter(item.reasons or {})
            reasons["quota_moved"] += stored
            moved = WorkItem.objects.filter(pk=item.pk, attempts=claim, status=WorkItem.Status.RUNNING).update(
                quota=F("quota") - stored, reasons=dict(reasons)
            )
            if not moved:  # our claim is gone: nothing of this happened
                transaction.set_rollback(True)
                return 0
            item.reasons = dict(reasons)
    return stored
