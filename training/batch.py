"""Batch mode: a job's model calls go through the provider's batches API, in rounds.

A round is one provider batch holding the next request of every unfinished work item
(ask = what the item still needs, at most MASSCER_PAIRS_PER_CALL, with its existing
questions and the feedback on its last reply, as live). The poll task (`batch_tick`)
submits a round, polls it, and once the batch is finished takes every result in
through the same code as live calls (`services.replies.reply_absorb`: validation,
storing, call, token and cost counters, feedback), at MASSCER_BATCH_PRICE_FACTOR of the
price. Items
still short go into the next round (top-ups), within the same calls budget as live.

Errors: a result line with a transient error, a request the batch never answered (a
failed or expired batch) and submit/poll failures are retried with backoff until the
model has been unreachable for MASSCER_MODEL_UNREACHABLE_SECONDS; permanent errors fail
the items with the reason.

Running a tick twice is harmless: a round is worked on by one worker at a time (a lease
on the round, claimed by a conditional update, and `next_check_at`, which turns a
duplicate task into a no-op), its results are claimed once (submitted → ingesting), and
each work item takes a round's result in once (`WorkItem.batch_round`, in the same
transaction as its completions). No transaction is held across an HTTP call.

Work items are claimed and closed through `services.state`, as live runs are; opening a
round and scheduling the poll task are services too (`services.rounds`, which the job's
dispatch and the sweeper call).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from masscer import endpoint, metrics
from masscer.lib import llm

from . import questions
from .models import BatchRound, Completion, TrainingJob, WorkItem
from .services import replies, retry, state
from .services.rounds import batch_poll_schedule, batch_round_open

logger = logging.getLogger(__name__)

Round = BatchRound.Status
DEFAULT_POLL_SECONDS = 60.0
DEFAULT_PRICE_FACTOR = 0.5


def poll_seconds() -> float:
    return float(getattr(settings, "MASSCER_BATCH_POLL_SECONDS", DEFAULT_POLL_SECONDS))


def price_factor() -> Decimal:
    return Decimal(str(getattr(settings, "MASSCER_BATCH_PRICE_FACTOR", DEFAULT_PRICE_FACTOR)))


# --- rounds --------------------------------------------------------------------------------


def _claim_round(round_: BatchRound) -> bool:
    """Take the round for this tick; False if it is not due or another worker has it."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MASSCER_BATCH_LEASE_SECONDS)
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    return (
        BatchRound.objects.filter(free, pk=round_.pk, status__in=BatchRound.OPEN, next_check_at__lte=now).update(
            lease_expires_at=lease
        )
        == 1
    )


def _release(round_: BatchRound, countdown: float, **fields: object) -> None:
    """End this tick: look again after `countdown` seconds (and have the task do so)."""
    next_check = timezone.now() + timedelta(seconds=countdown)
    BatchRound.objects.filter(pk=round_.pk).update(lease_expires_at=None, next_check_at=next_check, **fields)
    batch_poll_schedule(job_id=round_.job_id, countdown=countdown)


def _close_round(round_: BatchRound, status: str, **fields: object) -> None:
    BatchRound.objects.filter(pk=round_.pk, status__in=BatchRound.OPEN).update(
        status=status, lease_expires_at=None, finished_at=timezone.now(), **fields
    )


def batch_tick(*, job_id: int) -> str:
    """Move a batch job on by one step (submit, poll or take results in); safe to run twice."""
    round_ = BatchRound.objects.filter(job_id=job_id).order_by("-number").first()
    if round_ is None or round_.status not in BatchRound.OPEN:
        return "idle"
    if not _claim_round(round_):
        return "not-due"
    job = TrainingJob.objects.get(pk=job_id)
    if job.status != TrainingJob.Status.GENERATING:
        _stop(round_)
        return "job-not-running"
    if round_.status == Round.PENDING:
        return _submit(job, round_)
    return _poll(job, round_)


def _stop(round_: BatchRound) -> None:
    """The job was cancelled or failed: stop the provider's batch (best effort) and the round."""
    if round_.status == Round.SUBMITTED and round_.batch_id:
        try:
            llm.batch_cancel(endpoint.llm_config(), round_.batch_id)
        except (llm.LLMError, ValueError) as exc:
            logger.info("could not cancel batch %s: %s", round_.batch_id, exc)
    _close_round(round_, Round.CANCELLED)


# --- submitting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    item_id: int
    asked: int
    request: llm.BatchItem


def _submit(job: TrainingJob, round_: BatchRound) -> str:
    if state.job_over_budget(job.pk):
        _settle_pending(job, budget_exhausted=True)
        _close_round(round_, Round.CANCELLED, error="The job reached its cost budget.")
        state.job_finish_if_done(job_id=job.pk)
        return "budget-exhausted"
    planned = _plan_requests(job, round_)
    if not planned:
        _close_round(round_, Round.CANCELLED, error="Nothing left to ask.")
        state.job_finish_if_done(job_id=job.pk)
        return "nothing-to-ask"
    metadata = {"masscer_job": str(job.pk), "masscer_round": str(round_.number)}
    try:
        batch_id = llm.batch_submit(endpoint.llm_config(), [p.request for p in planned], metadata=metadata)
    except llm.LLMTransientError as exc:
        return _retry_later(job, round_, exc)
    except (llm.LLMPermanentError, ValueError) as exc:
        _fail_round(job, round_, str(exc))
        return "failed-permanent"
    requests = {p.request.custom_id: {"item": p.item_id, "asked": p.asked} for p in planned}
    # A worker that dies between the two calls above and this update leaves the round
    # pending: it is submitted again and the orphaned batch is never read.
    _release(
        round_,
        poll_seconds(),
        status=Round.SUBMITTED,
        batch_id=batch_id,
        requests=requests,
        submitted_at=timezone.now(),
        provider_status="validating",
        unavailable_since=None,
        error="",
    )
    return "submitted"


def _plan_requests(job: TrainingJob, round_: BatchRound) -> list[_Planned]:
    """The next request of every unfinished item, as live would ask it.

    An item finished here short hands its missing pairs on (`services.handoff`), which may
    send finished items back to work: they are asked in this round too.
    """
    questions = _JobQuestions.load(job.pk)
    params = replies.job_params(job)
    planned: list[_Planned] = []
    seen: set[tuple[int, int]] = set()  # (item, quota): a reopened item comes back with a larger quota
    while True:
        pending = WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).select_related("job", "chunk")
        items = [item for item in pending.order_by("chunk__index") if (item.pk, item.quota) not in seen]
        if not items:
            return planned
        for item in items:
            # An item finished earlier in this pass may have raised this one's quota.
            item.refresh_from_db(fields=["quota"])
            seen.add((item.pk, item.quota))
            if any(p.item_id == item.pk for p in planned):
                continue  # asked already; its larger quota counts from the next round
            progress = questions.progress(item)
            if not replies.wants_more(item, progress, replies.item_calls_budget(item)):
                _finish_item(item, progress)
                continue
            planned.append(_Planned(item.pk, *_request(job, round_, item, progress, params)))


def _request(
    job: TrainingJob, round_: BatchRound, item: WorkItem, progress: replies.Progress, params: llm.GenParams
) -> tuple[int, llm.BatchItem]:
    asked = min(item.quota - progress.made, progress.per_call)
    source = replies.model_source(item)
    request = llm.BatchItem(
        custom_id=f"job{job.pk}-round{round_.number}-item{item.pk}",
        source=source,
        count=asked,
        existing_questions=tuple(replies.prompt_questions(progress)),
        instructions=job.instructions,
        params=params,
        feedback=progress.feedback,
        source_kind=item.chunk.source_type,
        style=job.style,
        overlap_chars=replies.source_overlap(item, source),
        guidance=replies.job_guidance(job, item),
    )
    return asked, request


# --- polling and taking results in ------------------------------------------------------------


def _poll(job: TrainingJob, round_: BatchRound) -> str:
    try:
        polled = llm.batch_poll(endpoint.llm_config(), round_.batch_id)
    except llm.LLMTransientError as exc:
        return _retry_later(job, round_, exc)
    except (llm.LLMPermanentError, ValueError) as exc:
        _fail_round(job, round_, str(exc))
        return "failed-permanent"
    seen = {"provider_status": polled.status, "request_counts": dict(polled.request_counts)}
    if not polled.done:
        _release(round_, poll_seconds(), unavailable_since=None, **seen)
        return "waiting"
    # The per-round "ingested" flag: only one worker moves the round on to ingesting
    # (a worker that died while ingesting left it there, and its lease has expired).
    claimed = BatchRound.objects.filter(pk=round_.pk, status=Round.SUBMITTED).update(status=Round.INGESTING, **seen)
    if not claimed and round_.status != Round.INGESTING:
        return "not-ours"
    return _ingest(job, round_, polled)


def _ingest(job: TrainingJob, round_: BatchRound, polled: llm.BatchState) -> str:
    try:
        results = dict(llm.batch_results(endpoint.llm_config(), polled, model=job.model))
    except llm.LLMTransientError as exc:
        return _retry_later(job, round_, exc)
    except (llm.LLMPermanentError, ValueError) as exc:
        _fail_round(job, round_, str(exc))
        return "failed-permanent"
    unanswered = llm.LLMTransientError(_unanswered(polled))
    questions = _JobQuestions.load(job.pk)
    transient: list[llm.LLMTransientError] = []
    for custom_id, entry in round_.requests.items():
        outcome = results.get(custom_id, unanswered)
        if _take_in(round_, int(entry["item"]), int(entry["asked"]), outcome, questions) and isinstance(
            outcome, llm.LLMTransientError
        ):
            transient.append(outcome)
    error = f"{len(transient)} request(s) to retry: {transient[0]}" if transient else ""
    BatchRound.objects.filter(pk=round_.pk, status=Round.INGESTING).update(
        status=Round.INGESTED, lease_expires_at=None, finished_at=timezone.now(), error=error
    )
    _next_round(job, round_, transient)
    return "ingested"


def _unanswered(polled: llm.BatchState) -> str:
    detail = "; ".join(polled.errors[:3])
    return f"The batch {polled.batch_id} ended {polled.status} without answering this request" + (
        f": {detail}" if detail else ""
    )


def _take_in(
    round_: BatchRound,
    item_id: int,
    asked: int,
    outcome: llm.Reply | llm.LLMError,
    questions: _JobQuestions,
) -> bool:
    """Take one result in for its item, once; False if the item had taken it in already."""
    with transaction.atomic():
        claim = state.item_claim_pending(item_id, round_number=round_.number)
        if claim is None:
            return False
        item = WorkItem.objects.select_related("job", "chunk").get(pk=item_id)
        if isinstance(outcome, llm.Reply):
            _take_reply(item, claim, asked, outcome, questions)
        elif isinstance(outcome, llm.LLMPermanentError):
            state.item_fail_model(item, claim, str(outcome))
        else:
            since = item.unavailable_since or timezone.now()
            failure = retry.unreachable(since, outcome)
            if failure is not None:
                state.item_fail_model(item, claim, failure)
            else:
                _release_item(item, claim, unavailable_since=since)
    metrics.record_call(outcome, mode="batch")  # once per result, like the item's counters
    return True


def _take_reply(item: WorkItem, claim: int, asked: int, reply: llm.Reply, questions: _JobQuestions) -> None:
    progress = questions.progress(item)
    stored = replies.reply_absorb(item, claim, reply, asked, progress, replies.model_source(item), price_factor())
    if stored > 0:
        questions.stored()
    carried = {
        "feedback": progress.feedback,
        "per_call": progress.per_call,
        "rejected": progress.rejected_duplicates[-replies.MAX_EXISTING_IN_PROMPT:],
    }
    if stored >= 0 and not replies.wants_more(item, progress, replies.item_calls_budget(item)):
        state.item_close_done(item, claim, progress)
        WorkItem.objects.filter(pk=item.pk).update(batch_state=carried)
    else:
        _release_item(item, claim, batch_state=carried)


def _next_round(job: TrainingJob, round_: BatchRound, transient: list[llm.LLMTransientError]) -> None:
    """Open the next round for the items still short (after a backoff if some failed)."""
    still_short = WorkItem.objects.filter(job=job, status=WorkItem.Status.PENDING).exists()
    running = TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.GENERATING).exists()
    if not still_short or not running:
        state.job_finish_if_done(job_id=job.pk)
        return
    failures = round_.failures + 1 if transient else 0
    countdown = 0.0
    if transient:
        retry_after = max((exc.retry_after or 0.0 for exc in transient), default=0.0)
        countdown = retry.backoff(failures, retry_after or None)
    batch_round_open(job_id=job.pk, countdown=countdown, failures=failures)


# --- failures ---------------------------------------------------------------------------------


def _retry_later(job: TrainingJob, round_: BatchRound, exc: llm.LLMTransientError) -> str:
    """Submit, poll or download failed for now: try again with backoff, within the limit."""
    since = round_.unavailable_since or timezone.now()
    failure = retry.unreachable(since, exc)
    if failure is not None:
        _fail_round(job, round_, failure)
        return "failed-transient"
    countdown = retry.backoff(round_.failures, exc.retry_after)
    _release(round_, countdown, failures=F("failures") + 1, unavailable_since=since, error=str(exc))
    return "retry-later"


def _fail_round(job: TrainingJob, round_: BatchRound, error: str) -> None:
    """A permanent failure: the unfinished items fail with the reason, and the job ends."""
    for item, claim in state.items_claim_pending(job.pk):
        state.item_fail_model(item, claim, error)
    _close_round(round_, Round.FAILED, error=error)
    state.job_finish_if_done(job_id=job.pk)


def _settle_pending(job: TrainingJob, *, budget_exhausted: bool) -> None:
    questions = _JobQuestions.load(job.pk)
    for item, claim in state.items_claim_pending(job.pk):
        progress = questions.progress(item)
        progress.budget_exhausted = budget_exhausted
        state.item_close_done(item, claim, progress)


# --- work items -------------------------------------------------------------------------------


def _release_item(item: WorkItem, claim: int, **fields: object) -> None:
    """Hand a claimed item back for the next round."""
    state.item_close(item.pk, claim, WorkItem.Status.PENDING, enqueued_at=timezone.now(), **fields)


def _finish_item(item: WorkItem, progress: replies.Progress) -> None:
    claim = state.item_claim_pending(item.pk)
    if claim is not None:
        state.item_close_done(item, claim, progress)


class _JobQuestions(questions.JobQuestions):
    """The job's questions, read once per round, for the prompts and the duplicate checks.

    Unlike a live run's copy it is not shared: screening adds what it accepts straight to
    its index, and `stored` moves the cursor past those rows.
    """

    @classmethod
    def load(cls, job_id: int) -> _JobQuestions:
        loaded = cls(job_id)
        loaded.refresh()
        return loaded

    def progress(self, item: WorkItem) -> replies.Progress:
        """What a live run of this item would know, with the state carried from its last reply."""
        own = self.chunk_questions(item.chunk_id)
        carried = item.batch_state or {}
        return replies.Progress(
            index=self.index,
            seen_completion_id=self.cursor,
            chunk_questions=own,
            other_questions=self.others(item.chunk_id, replies.MAX_EXISTING_IN_PROMPT),
            made=len(own),
            per_call=max(1, int(carried.get("per_call") or settings.MASSCER_PAIRS_PER_CALL)),
            feedback=carried.get("feedback"),
            rejected_duplicates=list(carried.get("rejected") or []),
        )

    def stored(self) -> None:
        # The new rows are in the index already (screening adds what it accepts).
        self.cursor = Completion.objects.filter(job_id=self.job_id).aggregate(n=Max("pk"))["n"] or self.cursor
