"""Batch mode: a job's model calls go through the provider's batches API, in rounds.

A round is one provider batch holding the next request of every unfinished work item
(ask = what the item still needs, at most MASSCER_PAIRS_PER_CALL, with its existing
questions and the feedback on its last reply, as live). The poll task (`batch_tick`)
submits a round, polls it, and once the batch is finished takes every result in
through the same code as live calls (`services.replies.reply_absorb`: validation,
storing, call, token and cost counters, feedback), at MASSCER_BATCH_PRICE_FACTOR of the
price. Items
still short go into the next round (top-ups), within the same calls budget as live.

The judge pass (`services.judging`): a round's validated pairs wait for the judge in the
item (`batch_state["held"]`), and the next round carries a judge request for them
alongside the item's next generation request (which asks only for what the waiting pairs
do not cover). Taking that round in judges them first: the kept ones are stored, the low
ones are rejected and topped up like any other rejection, so the job makes exactly N.

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
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from masscer import endpoint, metrics
from masscer.lib import llm

from . import questions
from .models import BatchRound, Completion, TrainingJob, WorkItem
from .services import judging, replies, retry, spans, state
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
    request: llm.BatchItem | llm.JudgeItem
    judged: int = 0  # a judge request: how many pairs it scores

    @property
    def entry(self) -> dict[str, int]:
        """What `BatchRound.requests` keeps of the request."""
        if self.judged:
            return {"item": self.item_id, "judge": self.judged}
        return {"item": self.item_id, "asked": self.asked}


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
    requests = {p.request.custom_id: p.entry for p in planned}
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
            if progress.held:
                planned.append(_judge_request(job, round_, item, progress, params))
            if replies.wants_pairs(item, progress, replies.item_calls_budget(item)):
                planned.append(_Planned(item.pk, *_request(job, round_, item, progress, params)))


def _judge_request(
    job: TrainingJob, round_: BatchRound, item: WorkItem, progress: replies.Progress, params: llm.GenParams
) -> _Planned:
    """The judge request for the pairs waiting for the judge in `item`."""
    pairs = tuple(llm.Pair(c.question, c.answer, c.evidence) for c in progress.held)
    custom_id = f"job{job.pk}-round{round_.number}-item{item.pk}-judge"
    request = llm.JudgeItem(
        custom_id=custom_id,
        source=replies.model_source(item),
        pairs=pairs,
        params=params,
        question_type=item.question_type,
    )
    return _Planned(item.pk, 0, request, judged=len(pairs))


def _request(
    job: TrainingJob, round_: BatchRound, item: WorkItem, progress: replies.Progress, params: llm.GenParams
) -> tuple[int, llm.BatchItem]:
    # The pairs waiting for the judge count as made unless it rejects them (then a top-up).
    asked = min(item.quota - progress.made - len(progress.held), progress.per_call)
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
    judged = {custom_id: int(entry["judge"]) for custom_id, entry in round_.requests.items() if "judge" in entry}
    try:
        results = dict(llm.batch_results(endpoint.llm_config(), polled, model=job.model, judged=judged))
    except llm.LLMTransientError as exc:
        return _retry_later(job, round_, exc)
    except (llm.LLMPermanentError, ValueError) as exc:
        _fail_round(job, round_, str(exc))
        return "failed-permanent"
    unanswered = llm.LLMTransientError(_unanswered(polled))
    questions = _JobQuestions.load(job.pk)
    transient: list[llm.LLMTransientError] = []
    for item_id, answers in _answers(round_.requests, results, unanswered).items():
        transient += _take_in(round_, item_id, answers, questions)
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


@dataclass
class _Answers:
    """What a round brought back for one item: its generation result and its judge result."""

    asked: int = 0
    reply: llm.Reply | llm.LLMError | None = None
    judged: llm.JudgeReply | llm.LLMError | None = None


def _answers(
    requests: dict[str, dict[str, int]],
    results: dict[str, llm.Reply | llm.JudgeReply | llm.LLMError],
    unanswered: llm.LLMTransientError,
) -> dict[int, _Answers]:
    by_item: dict[int, _Answers] = {}
    for custom_id, entry in requests.items():
        answers = by_item.setdefault(int(entry["item"]), _Answers())
        outcome = results.get(custom_id, unanswered)
        if "judge" in entry:
            answers.judged = outcome  # type: ignore[assignment]
        else:
            answers.asked, answers.reply = int(entry["asked"]), outcome  # type: ignore[assignment]
    return by_item


def _take_in(
    round_: BatchRound, item_id: int, answers: _Answers, questions: _JobQuestions
) -> list[llm.LLMTransientError]:
    """Take a round's results in for their item, once (nothing if it had taken them in
    already); the transient errors among them, which the next round backs off for."""
    outcome = answers.reply
    with transaction.atomic():
        claim = state.item_claim_pending(item_id, round_number=round_.number)
        if claim is None:
            return []
        item = WorkItem.objects.select_related("job", "chunk").get(pk=item_id)
        progress = questions.progress(item)
        transient: list[llm.LLMTransientError] = []
        since = None
        if answers.judged is not None:
            since = _take_judgement(item, claim, answers.judged, progress, questions, round_.failures)
            if since is not None:
                transient.append(answers.judged)  # type: ignore[arg-type]
        if outcome is None or isinstance(outcome, llm.Reply):
            _take_reply(item, claim, answers.asked, outcome, progress, questions, since)
        elif isinstance(outcome, llm.LLMPermanentError):
            state.item_fail_model(item, claim, str(outcome))
        else:
            transient.append(outcome)  # type: ignore[arg-type]
            since = item.unavailable_since or timezone.now()
            failure = retry.unreachable(since, outcome)
            if failure is not None:
                state.item_fail_model(item, claim, failure)
            else:
                _release_item(item, claim, unavailable_since=since)
    # Once per result, like the item's counters.
    if answers.judged is not None:
        metrics.record_call(answers.judged, mode="batch", purpose="judge")
    if outcome is not None:
        metrics.record_call(outcome, mode="batch")
    return transient


def _take_judgement(
    item: WorkItem,
    claim: int,
    outcome: llm.JudgeReply | llm.LLMError,
    progress: replies.Progress,
    questions: _JobQuestions,
    failures: int,
) -> datetime | None:
    """Judge the item's waiting pairs with the round's answer and store those it keeps; if the
    answer was a transient error (they wait another round), since when the model is unavailable."""
    if not progress.held:
        return None
    call = judging.Answered(item, outcome, sent=list(progress.held), attempt=failures)
    stored = replies.held_absorb(item, claim, progress, replies.model_source(item), call, price_factor())
    if stored > 0:
        questions.stored()
    deferred = progress.deferred
    return deferred.since if deferred is not None and deferred.error is not None else None


def _take_reply(
    item: WorkItem,
    claim: int,
    asked: int,
    reply: llm.Reply | None,
    progress: replies.Progress,
    questions: _JobQuestions,
    unavailable_since: datetime | None = None,
) -> None:
    """Take the item's generation reply in (none: the round judged its pairs only), then
    close the item or hand it to the next round with what that round needs to know."""
    stored = 0
    if reply is not None:
        judge = judging.later if item.job.judge else None
        source = replies.model_source(item)
        stored = replies.reply_absorb(item, claim, reply, asked, progress, source, price_factor(), judge=judge)
        if stored > 0:
            questions.stored()
    carried = {
        "feedback": progress.feedback,
        "per_call": progress.per_call,
        "rejected": progress.rejected_duplicates[-replies.MAX_EXISTING_IN_PROMPT:],
        **judging.held_state(progress.held, progress.held_model),
    }
    if stored >= 0 and not replies.wants_more(item, progress, replies.item_calls_budget(item)):
        state.item_close_done(item, claim, progress)
        WorkItem.objects.filter(pk=item.pk).update(batch_state=carried)
    else:
        fields = {"unavailable_since": unavailable_since} if unavailable_since is not None else {}
        _release_item(item, claim, batch_state=carried, **fields)


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
        if progress.held:  # they could not be judged within the budget: not stored
            reasons = Counter(item.reasons or {})
            reasons["judge_unchecked"] += len(progress.held)
            item.reasons = dict(reasons)
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
        chunk_ids = spans.span_source(item).chunk_ids
        own = self.own(chunk_ids, item.question_type)
        carried = item.batch_state or {}
        held, held_model = judging.held_load(item)
        return replies.Progress(
            held=held,
            held_model=held_model,
            index=self.index,
            seen_completion_id=self.cursor,
            chunk_questions=own,
            other_questions=self.others(chunk_ids, item.question_type, replies.MAX_EXISTING_IN_PROMPT),
            made=len(own),
            per_call=max(1, int(carried.get("per_call") or settings.MASSCER_PAIRS_PER_CALL)),
            feedback=carried.get("feedback"),
            rejected_duplicates=list(carried.get("rejected") or []),
            chunk_id=item.chunk_id,
            chunk_ids=chunk_ids,
            question_type=item.question_type,
        )

    def stored(self) -> None:
        # The new rows are in the index already (screening adds what it accepts).
        self.cursor = Completion.objects.filter(job_id=self.job_id).aggregate(n=Max("pk"))["n"] or self.cursor
