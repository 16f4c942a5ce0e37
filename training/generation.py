"""Live generation: one claimed work item, bounded model calls, validated output.

No transaction or row lock is held across a model call: read, call, then write in one
short transaction (`services.replies.reply_absorb`).

This module holds what only a live run does: the claim's lease heartbeat, the shared rate
limit and call slots around each call, handing the item back to be retried later, and the
last wave's spare pair. The rest is the services' core, which batch mode
(`training.batch`) drives too, so live and batch results are judged alike:
`services.state` (claims, closes, job status) and `services.replies` (the request,
validation, storing, counters, feedback).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.conf import settings
from django.utils import timezone

from masscer import endpoint, logs, metrics
from masscer.leases import heartbeat
from masscer.lib import concurrency, llm, ratelimit

from . import hotsql
from .models import TrainingJob, WorkItem
from .services import judging, replies, retry, spans, spares, state

# Token estimates reserved in the shared tokens-per-minute limit before a call.
PROMPT_OVERHEAD_TOKENS = 400
TOKENS_PER_PAIR = 120
# A last-wave call asks for one spare pair per this many pairs it needs (`_spare`).
SPARE_EVERY = 5


class RetryLater(Exception):
    """The model is unavailable for now; the task should run again after `countdown`."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


def _rate_wait(limiter: ratelimit.RateLimiter | None, tokens: int) -> float | None:
    """Take a place in the shared rate limit and wait for it; the seconds to come back after
    instead, if the line is too long."""
    if limiter is None:
        return None
    decision = limiter.take(tokens=tokens, max_wait=settings.MASSCER_RATELIMIT_MAX_WAIT)
    return None if decision.reserved else decision.wait


def _wait_for_slot(limiter: ratelimit.RateLimiter | None, item: WorkItem, claim: int, tokens: int) -> None:
    """Take a place in the shared rate limit and wait for it; hand the work back if the line is long."""
    wait = _rate_wait(limiter, tokens)
    if wait is not None:
        _hand_back(item, claim, wait, f"waiting {wait:.1f} s for the rate limit")


def _slot_wait(slots: concurrency.CallSlots) -> tuple[float, str]:
    """When to come back when no call slot came free in time, and why."""
    return random.uniform(1.0, 3.0), f"waiting for one of the {slots.current_limit()} model call slots"


@contextmanager
def _call_slot(slots: concurrency.CallSlots | None, item: WorkItem, claim: int) -> Iterator[None]:
    """Hold one of the endpoint's call slots for the call; hand the work back if none comes free."""
    if slots is None:
        yield
        return
    try:
        token = slots.take(settings.MASSCER_RATELIMIT_MAX_WAIT)
    except concurrency.NoSlot as exc:
        _hand_back(item, claim, *_slot_wait(slots))
        raise AssertionError("unreachable") from exc
    with endpoint.call_slot_held(slots, token):  # the call's outcome moves a learned limit
        yield


def _hand_back(item: WorkItem, claim: int, countdown: float, reason: str, **fields: object) -> None:
    """Release the claim and have the task come back after `countdown` seconds."""
    state.item_hand_back(item, claim, countdown, **fields)
    raise RetryLater(countdown, reason)


def _handle_transient(
    item: WorkItem, claim: int, exc: llm.LLMTransientError, attempt: int, limiter: ratelimit.RateLimiter | None
) -> None:
    since = item.unavailable_since or timezone.now()
    failure = retry.unreachable(since, exc)
    if failure is not None:
        state.item_fail_model(item, claim, failure)
        state.job_finish_if_done(job_id=item.job_id)
        return
    countdown = retry.backoff(attempt, exc.retry_after)
    _block_if_told(exc, limiter)
    # Hand the item back; the retry (or, if that message is lost, the sweeper) claims it again.
    _hand_back(item, claim, countdown, str(exc), unavailable_since=since)


def _block_if_told(exc: llm.LLMTransientError, limiter: ratelimit.RateLimiter | None) -> None:
    if exc.status_code == 429 and exc.retry_after and limiter is not None:
        limiter.block(exc.retry_after)  # the provider said wait: every worker waits


def _hand_back_if_held(
    item: WorkItem, claim: int, progress: replies.Progress, limiter: ratelimit.RateLimiter | None
) -> None:
    """Hand the item back when pairs wait for a judge call that cannot be made now; they are
    judged first when it comes back (`services.judging`)."""
    deferred = progress.deferred
    if deferred is None:
        return
    fields: dict[str, object] = {}
    if deferred.error is not None:
        _block_if_told(deferred.error, limiter)
        fields["unavailable_since"] = deferred.since
    _hand_back(item, claim, deferred.countdown, f"the judge call waits: {deferred}", **fields)


def work_item_run(*, item_id: int, attempt: int = 0) -> str:
    """Make the completions of one chunk's quota; safe to run twice or after a crash."""
    claimed = state.item_claim(item_id)
    if claimed is None:
        return "not-claimed"
    item, claim, counts = claimed
    logs.bind_to_task(job_id=item.job_id)
    # The lease is short (a dead worker's item is taken over within seconds); the heartbeat
    # keeps it while this run lives, model calls included.
    with heartbeat().hold(("work-item", item.pk), lambda: state.item_renew(item.pk, claim)):
        return _run_claimed(item, claim, counts, attempt)


def _run_claimed(item: WorkItem, claim: int, counts: tuple[int, int], attempt: int) -> str:
    open_items: tuple[int, int] | None = counts
    job = item.job
    if job.status not in TrainingJob.ITEMS_RUN:
        state.item_close(item.pk, claim, WorkItem.Status.CANCELLED)
        return "job-not-running"
    progress = replies.progress_load(item)
    budget = replies.item_calls_budget(item)
    config, params = endpoint.llm_config(), replies.job_params(job)
    source = replies.model_source(item)
    overlap = replies.source_overlap(item, source)
    guidance = replies.job_guidance(job, item)
    limiter = endpoint.model_limiter(job.model)
    llm.warm_up(config)  # before the first slot, not between the slot and the call
    slots = endpoint.call_slots(job.model)
    source_tokens = spans.span_source(item).tokens + PROMPT_OVERHEAD_TOKENS
    judge = _judge_call(item, config, params, source, source_tokens, limiter, slots, attempt) if job.judge else None
    first_call = True
    while replies.wants_more(item, progress, budget):
        if first_call:
            # The claim has just set the lease, and the job (status, budget, cost) and the
            # question index have just been read: checking them again before the first call
            # would cost four round trips per work item, each a wait for the llm worker's GIL.
            over_budget = job.budget is not None and job.cost >= job.budget
        else:
            if not state.item_renew(item.pk, claim):
                return "lost-lease"
            # Cancel (or a failure elsewhere) takes effect between model calls.
            running, over_budget = state.job_state(item.job_id)
            if not running:
                state.item_close(item.pk, claim, WorkItem.Status.CANCELLED)
                return "job-not-running"
        if progress.held and judge is not None:
            # Paid pairs an earlier judge call could not take (no slot in time, a transient
            # error): judged before anything else is asked (over budget: not stored).
            first_call = False
            if replies.held_absorb(item, claim, progress, source, judge) < 0:
                return "lost-lease"
            _hand_back_if_held(item, claim, progress, limiter)
            continue
        if over_budget:
            progress.budget_exhausted = True
            break
        if not first_call:
            replies.progress_refresh(item, progress)
        first_call = False
        asked = min(item.quota - progress.made, progress.per_call)
        # The first call uses the counts read with the item; later ones count again.
        progress.spare = _spare(job, progress, asked, open_items, slots)
        open_items = None
        try:
            with _call_slot(slots, item, claim):
                _wait_for_slot(limiter, item, claim, source_tokens + (asked + progress.spare) * TOKENS_PER_PAIR)
                if progress.shared is not None:
                    # The wait may have been long: show the model what was stored meanwhile.
                    progress.shared.refresh(max_age=replies.PROMPT_REFRESH_SECONDS)
                with metrics.model_call() as call:  # counted by outcome, tokens and latency
                    reply = call.reply = llm.generate_pairs(
                        config,
                        source=source,
                        count=asked + progress.spare,
                        existing_questions=replies.prompt_questions(progress),
                        instructions=job.instructions,
                        params=params,
                        feedback=progress.feedback,
                        source_kind=item.chunk.source_type,
                        style=job.style,
                        overlap_chars=overlap,
                        guidance=guidance,
                    )
        except llm.LLMTransientError as exc:
            _handle_transient(item, claim, exc, attempt, limiter)
            return "failed-transient"
        except llm.LLMPermanentError as exc:
            state.item_fail_model(item, claim, str(exc))
            state.job_finish_if_done(job_id=item.job_id)
            return "failed-permanent"
        if limiter is not None:
            limiter.tighten(reply.headers)
        stored = replies.reply_absorb(item, claim, reply, asked, progress, source, judge=judge)
        if stored < 0:
            return "lost-lease"
        _hand_back_if_held(item, claim, progress, limiter)
        if progress.spare and judge is None and not progress.closed:
            # A last-wave reply left the item short: other items' unused spares first, so that
            # the job does not wait a whole model latency for a second call (`services.spares`).
            spares.borrow(item, claim, progress, item.quota - progress.made - len(progress.held))
    return state.item_finish(item, claim, progress)


def _judge_call(
    item: WorkItem,
    config: llm.LLMConfig,
    params: llm.GenParams,
    source: str,
    source_tokens: int,
    limiter: ratelimit.RateLimiter | None,
    slots: concurrency.CallSlots | None,
    attempt: int,
) -> judging.JudgeCall:
    """The judge pass's model call, behind the same rate limit and call slots as generation.

    When it cannot be made now (no call slot or rate-limit place in time, a transient error)
    it raises `judging.JudgeDeferred` rather than handing the item back at once: the reply's
    pairs are kept in the item first (`replies.reply_absorb`), then `_hand_back_if_held`.
    """

    def call(pairs: Sequence[llm.Pair]) -> llm.JudgeReply:
        token = None
        if slots is not None:
            try:
                token = slots.take(settings.MASSCER_RATELIMIT_MAX_WAIT)
            except concurrency.NoSlot as exc:
                raise judging.JudgeDeferred(*_slot_wait(slots)) from exc
        try:
            with endpoint.call_slot_held(slots, token):  # the call's outcome moves a learned limit
                wait = _rate_wait(limiter, source_tokens + len(pairs) * TOKENS_PER_PAIR * 2)
                if wait is not None:
                    raise judging.JudgeDeferred(wait, f"waiting {wait:.1f} s for the rate limit")
                with metrics.model_call("judge") as timed:  # counted by outcome, tokens and latency
                    reply = timed.reply = llm.judge_pairs(
                        config, source=source, pairs=pairs, params=params, question_type=item.question_type
                    )
        except llm.LLMTransientError as exc:
            deferred = judging.transient(item, exc, attempt)
            if isinstance(deferred, judging.JudgeDeferred):
                raise deferred from exc
            raise
        if limiter is not None:
            limiter.tighten(reply.headers)
        return reply

    return call


def _spare(
    job: TrainingJob,
    progress: replies.Progress,
    asked: int,
    open_items: tuple[int, int] | None = None,
    slots: concurrency.CallSlots | None = None,
) -> int:
    """Spare pairs for a call in the last wave of a live job (one per SPARE_EVERY pairs asked,
    within the pairs a call may ask for), else 0.

    A reply with a rejected pair (most often a near duplicate of a question another chunk
    stored while this call was out, or of a sentence the text repeats) needs a second call.
    Early in a job that call overlaps with other chunks' first calls; in the last wave (no
    more items pending than running, or all of them within MASSCER_LLM_MAX_CONCURRENCY) it
    runs after them and adds a whole model latency to the
    job. A call over a span asks for more pairs, and two of them rejected was what sent a job
    into a second wave (B9). The spares cost their completion tokens; unused ones are counted
    as `spare_unused`. Mining asks for what the conversations hold, so it gets no spare.
    """
    if (
        not settings.MASSCER_SPARE_PAIR_AT_END
        or progress.shared is None
        or job.style == TrainingJob.Style.MINE
        or asked >= progress.per_call
    ):
        return 0
    pending, running = open_items if open_items is not None else hotsql.open_items(job.pk)
    # The calls the endpoint takes at once: learned (MASSCER_LLM_ADAPTIVE_CONCURRENCY) or set.
    capacity = slots.current_limit() if slots is not None else settings.MASSCER_LLM_MAX_CONCURRENCY
    # The last wave: no more items waiting than running, or all of them within the calls the
    # endpoint takes at once (a job of one wave: every second call comes after it).
    if pending > running and not (capacity and pending + running <= capacity):
        return 0
    return min(progress.per_call - asked, math.ceil(asked / SPARE_EVERY))
