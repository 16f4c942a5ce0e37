"""The generation service: one claimed work item, bounded model calls, validated output.

No transaction or row lock is held across a model call: read, call, then write in one
short transaction (`services.store_completions`).

Batch mode (`training.batch`) takes its replies in through the same helpers: `_absorb`
(validation, storing, counters, feedback), `_fail_model`/`_unreachable` (errors) and
`_close_done` (calls budget and reasons), so live and batch results are judged alike.
"""
from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from masscer.leases import heartbeat
from masscer.lib import concurrency, llm, ratelimit
from masscer.lib.pricing import call_cost, parse_prices
from masscer.lib.redact import redact
from masscer.lib.tokens import count_tokens

from . import hotsql, questions, services
from .models import Completion, TrainingJob, WorkItem
from .planning import calls_budget
from .validation import Candidate, QuestionIndex, add_samples, pair_text, screen, shorten

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# How many of a chunk's own questions the model is shown to avoid repeats.
MAX_EXISTING_IN_PROMPT = 60
# Token estimates reserved in the shared tokens-per-minute limit before a call.
PROMPT_OVERHEAD_TOKENS = 400
TOKENS_PER_PAIR = 120
# How old this process's copy of a job's questions may be when a work item starts.
PROMPT_REFRESH_SECONDS = 0.1


class RetryLater(Exception):
    """The model is unavailable for now; the task should run again after `countdown`."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


def llm_config() -> llm.LLMConfig:
    return llm.LLMConfig(
        base_url=settings.MASSCER_LLM_BASE_URL,
        api_key=settings.MASSCER_LLM_API_KEY,
        model=settings.MASSCER_LLM_MODEL,
        mode=settings.MASSCER_LLM_MODE,
        timeout=settings.MASSCER_LLM_TIMEOUT,
        schema_counts=settings.MASSCER_LLM_SCHEMA_COUNTS,
    )


def job_params(job: TrainingJob) -> llm.GenParams:
    return llm.GenParams(
        model=job.model,
        temperature=job.temperature if job.temperature is not None else settings.MASSCER_LLM_TEMPERATURE,
        top_p=job.top_p,
        max_tokens=job.max_tokens,
        frequency_penalty=job.frequency_penalty,
        stop=tuple(job.stop or ()),
    )


def _claim(item_id: int) -> tuple[WorkItem, int, tuple[int, int]] | None:
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


def usage_pair(usage: llm.Usage) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens


def _over_budget(job_id: int) -> bool:
    return _job_state(job_id)[1]


def _job_state(job_id: int) -> tuple[bool, bool]:
    """Whether the job still runs and whether it has reached its budget (one query)."""
    row = TrainingJob.objects.filter(pk=job_id).values_list("status", "budget", "cost").first()
    if row is None:
        return False, False
    status, budget, cost = row
    return status == TrainingJob.Status.GENERATING, budget is not None and cost >= budget


def model_limiter(model: str) -> ratelimit.RateLimiter | None:
    """The shared rate limit of the endpoint and `model` for every caller; None without Redis."""
    limits = ratelimit.Limits(settings.MASSCER_LLM_RPM, settings.MASSCER_LLM_TPM)
    if not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    return ratelimit.limiter_for(
        settings.MASSCER_RATELIMIT_REDIS_URL, base_url=settings.MASSCER_LLM_BASE_URL, model=model, limits=limits
    )


def _wait_for_slot(limiter: ratelimit.RateLimiter | None, item: WorkItem, claim: int, tokens: int) -> None:
    """Take a place in the shared rate limit and wait for it; hand the work back if the line is long."""
    if limiter is None:
        return
    decision = limiter.take(tokens=tokens, max_wait=settings.MASSCER_RATELIMIT_MAX_WAIT)
    if not decision.reserved:
        _hand_back(item, claim, decision.wait, f"waiting {decision.wait:.1f} s for the rate limit")


def call_slots(model: str) -> concurrency.CallSlots | None:
    """The endpoint's shared limit on calls in flight (MASSCER_LLM_MAX_CONCURRENCY); None if unset."""
    limit = settings.MASSCER_LLM_MAX_CONCURRENCY
    if limit <= 0 or not settings.MASSCER_RATELIMIT_REDIS_URL:
        return None
    return concurrency.slots_for(
        settings.MASSCER_RATELIMIT_REDIS_URL,
        base_url=settings.MASSCER_LLM_BASE_URL,
        model=model,
        limit=limit,
        lease_seconds=settings.MASSCER_LLM_TIMEOUT + 30,
    )


@contextmanager
def _call_slot(slots: concurrency.CallSlots | None, item: WorkItem, claim: int) -> Iterator[None]:
    """Hold one of the endpoint's call slots for the call; hand the work back if none comes free."""
    if slots is None:
        yield
        return
    try:
        token = slots.take(settings.MASSCER_RATELIMIT_MAX_WAIT)
    except concurrency.NoSlot as exc:
        _hand_back(item, claim, random.uniform(1.0, 3.0), f"waiting for one of the {slots.limit} model call slots")
        raise AssertionError("unreachable") from exc
    try:
        yield
    finally:
        slots.give(token)


def _hand_back(item: WorkItem, claim: int, countdown: float, reason: str, **fields: object) -> None:
    """Release the claim and have the task come back after `countdown` seconds."""
    WorkItem.objects.filter(pk=item.pk, attempts=claim).update(
        status=WorkItem.Status.PENDING,
        lease_expires_at=None,
        enqueued_at=timezone.now() + timedelta(seconds=countdown),
        **fields,
    )
    raise RetryLater(countdown, reason)


def _renew(item_id: int, claim: int) -> bool:
    lease = timezone.now() + timedelta(seconds=settings.MASSCER_LEASE_SECONDS)
    return (
        WorkItem.objects.filter(pk=item_id, attempts=claim, status=WorkItem.Status.RUNNING).update(
            lease_expires_at=lease
        )
        == 1
    )


def _close(item_id: int, claim: int, status: str, **fields: object) -> None:
    WorkItem.objects.filter(pk=item_id, attempts=claim, status=WorkItem.Status.RUNNING).update(
        status=status, lease_expires_at=None, **fields
    )


@dataclass(frozen=True)
class _CallCounters:
    """What one model call adds to the work item's and the job's counters."""

    prompt_tokens: int
    completion_tokens: int
    cost: Decimal


def _call_counters(item: WorkItem, reply: llm.Reply, price_factor: Decimal = Decimal(1)) -> _CallCounters:
    usage = reply.usage
    cost = call_cost(parse_prices(settings.MASSCER_LLM_PRICES), reply.model or item.job.model, *usage_pair(usage))
    return _CallCounters(usage.prompt_tokens, usage.completion_tokens, (cost or Decimal(0)) * price_factor)


def _record_call(item: WorkItem, counters: _CallCounters) -> None:
    """Count a model call on its own (normally `store_completions` counts it with its pairs)."""
    WorkItem.objects.filter(pk=item.pk).update(calls=F("calls") + 1, unavailable_since=None)
    TrainingJob.objects.filter(pk=item.job_id).update(
        calls=F("calls") + 1,
        prompt_tokens=F("prompt_tokens") + counters.prompt_tokens,
        completion_tokens=F("completion_tokens") + counters.completion_tokens,
        cost=F("cost") + counters.cost,
    )


@dataclass
class _Progress:
    """What one run of a work item knows between model calls."""

    index: QuestionIndex
    seen_completion_id: int
    chunk_questions: list[str]
    # Questions other chunks of the job already have: overlapping or repetitive text
    # makes the model repeat them unless it is told.
    other_questions: list[str]
    made: int
    per_call: int
    feedback: str | None = None
    exhausted: bool = False
    budget_exhausted: bool = False
    # Questions the model offered that were rejected as (near-)duplicates. The prompt shows
    # only the latest questions of other chunks, so a clash with an older one (a running
    # header, an index entry) would otherwise be offered again on every retry.
    rejected_duplicates: list[str] = field(default_factory=list)
    # Live runs share this process's copy of the job's questions (`index` is then an
    # overlay on it and `other_questions` is read from it); batch rounds bring their own.
    shared: questions.JobQuestions | None = None
    chunk_id: int = 0
    # The item was closed as done in the transaction that stored its last pairs.
    closed: bool = False
    # Pairs asked for in the current call beyond what the chunk still needs (see `_spare`).
    spare: int = 0
    # Calls that lost a pair to another worker storing the same question first (the insert
    # skipped it). Not the model's doing: each gives the item one more call than its budget
    # (over a job at most N, since each such pair is a question another item stored).
    raced: int = 0


def _model_source(item: WorkItem) -> str:
    """The chunk text the model sees (and evidence is checked against)."""
    # Redaction happens before any text leaves for the model; evidence is checked
    # against the same redacted text the model saw.
    return redact(item.chunk.text)[0] if item.job.redact else item.chunk.text


def _load_progress(item: WorkItem) -> _Progress:
    # After the claim: every pair an earlier claim of this item stored is committed (a
    # stale holder cannot store any more), so the refreshed copy has all of them.
    shared = questions.for_job(item.job)
    # The questions only steer the prompt until the reply is screened (which refreshes
    # again), so a copy refreshed a moment ago by another thread will do, unless an earlier
    # claim of this item may have stored pairs: those count towards its quota.
    first_claim = item.attempts == 1 and item.made == 0
    shared.refresh(max_age=PROMPT_REFRESH_SECONDS if first_claim else 0.0)
    mine = shared.chunk_questions(item.chunk_id)
    return _Progress(
        index=questions.Overlay(shared.index, settings.MASSCER_NEAR_DUPLICATE_JACCARD),  # type: ignore[arg-type]
        seen_completion_id=shared.cursor,
        chunk_questions=mine,
        other_questions=[],
        made=len(mine),
        per_call=max(1, settings.MASSCER_PAIRS_PER_CALL),
        shared=shared,
        chunk_id=item.chunk_id,
    )


def _refresh_index(item: WorkItem, progress: _Progress) -> None:
    # Other chunks of the same job store questions concurrently; fold in the new ones.
    if progress.shared is not None:
        progress.shared.refresh()
        progress.seen_completion_id = progress.shared.cursor
        return
    newer = Completion.objects.filter(job_id=item.job_id, pk__gt=progress.seen_completion_id).exclude(
        chunk_id=item.chunk_id
    )
    for pk, question in newer.values_list("pk", "question"):
        progress.index.add(question)
        progress.other_questions.append(question)
        progress.seen_completion_id = max(progress.seen_completion_id, pk)


def _prompt_questions(progress: _Progress) -> list[str]:
    own = progress.chunk_questions[-MAX_EXISTING_IN_PROMPT:]
    room = MAX_EXISTING_IN_PROMPT - len(own)
    rejected = progress.rejected_duplicates[-room:] if room > 0 else []
    room -= len(rejected)
    if room <= 0:
        others: list[str] = []
    elif progress.shared is not None:
        others = progress.shared.others(progress.chunk_id, room)
    else:
        others = progress.other_questions[-room:]
    return others + rejected + own


def _feedback(reply: llm.Reply, reasons: Counter[str], asked: int, accepted: int) -> str | None:
    if reply.parse_error:
        return (
            f"Your previous reply could not be parsed ({reply.parse_error}). "
            "Reply with the required format only."
        )
    if reply.finish_reason == "length":
        return "Your previous reply was cut off at the length limit. Write fewer, shorter pairs."
    if accepted < asked:
        problems = []
        if reasons.get("evidence_not_found"):
            problems.append("some evidence quotes were not copied verbatim from the source")
        if reasons.get("duplicate"):
            problems.append("some questions repeated earlier ones")
        if reasons.get("empty_field"):
            problems.append("some pairs had an empty field")
        if problems:
            return "In your previous reply " + "; ".join(problems) + "."
    return None


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return max(0.5, retry_after)
    # Exponential with full jitter, so many workers do not retry in lockstep.
    ceiling = min(settings.MASSCER_RETRY_BACKOFF_MAX, 2.0 ** min(attempt, 10))
    return random.uniform(ceiling / 2, ceiling)


def _unreachable(since: datetime | None, exc: llm.LLMError) -> str | None:
    """The failure once the model has been unreachable for too long (since `since`), else None."""
    waited = (timezone.now() - since).total_seconds() if since is not None else 0.0
    if waited < settings.MASSCER_MODEL_UNREACHABLE_SECONDS:
        return None
    minutes = settings.MASSCER_MODEL_UNREACHABLE_SECONDS / 60
    return f"Model unreachable for {minutes:g} minutes: {exc}"


def _fail_model(item: WorkItem, claim: int, error: str) -> None:
    """Close a claimed item as failed by the model (the job is finished by the caller)."""
    reasons = Counter(item.reasons or {})
    reasons["model_error"] += 1
    _close(item.pk, claim, WorkItem.Status.FAILED, error=error, reasons=dict(reasons))


def _handle_transient(
    item: WorkItem, claim: int, exc: llm.LLMTransientError, attempt: int, limiter: ratelimit.RateLimiter | None
) -> None:
    since = item.unavailable_since or timezone.now()
    failure = _unreachable(since, exc)
    if failure is not None:
        _fail_model(item, claim, failure)
        services.job_finish_if_done(job_id=item.job_id)
        return
    countdown = _backoff(attempt, exc.retry_after)
    if exc.status_code == 429 and exc.retry_after and limiter is not None:
        limiter.block(exc.retry_after)  # the provider said wait: every worker waits
    # Hand the item back; the retry (or, if that message is lost, the sweeper) claims it again.
    _hand_back(item, claim, countdown, str(exc), unavailable_since=since)


def work_item_run(*, item_id: int, attempt: int = 0) -> str:
    """Make the completions of one chunk's quota; safe to run twice or after a crash."""
    claimed = _claim(item_id)
    if claimed is None:
        return "not-claimed"
    item, claim, counts = claimed
    # The lease is short (a dead worker's item is taken over within seconds); the heartbeat
    # keeps it while this run lives, model calls included.
    with heartbeat().hold(("work-item", item.pk), lambda: _renew(item.pk, claim)):
        return _run_claimed(item, claim, counts, attempt)


def _run_claimed(item: WorkItem, claim: int, counts: tuple[int, int], attempt: int) -> str:
    open_items: tuple[int, int] | None = counts
    job = item.job
    if job.status != TrainingJob.Status.GENERATING:
        _close(item.pk, claim, WorkItem.Status.CANCELLED)
        return "job-not-running"
    progress = _load_progress(item)
    budget = _item_calls_budget(item)
    config, params = llm_config(), job_params(job)
    source = _model_source(item)
    limiter = model_limiter(job.model)
    llm.warm_up(config)  # before the first slot, not between the slot and the call
    slots = call_slots(job.model)
    source_tokens = (count_tokens(source) if job.redact else item.chunk.token_count) + PROMPT_OVERHEAD_TOKENS
    first_call = True
    while _wants_more(item, progress, budget):
        if first_call:
            # The claim has just set the lease, and the job (status, budget, cost) and the
            # question index have just been read: checking them again before the first call
            # would cost four round trips per work item, each a wait for the llm worker's GIL.
            over_budget = job.budget is not None and job.cost >= job.budget
        else:
            if not _renew(item.pk, claim):
                return "lost-lease"
            # Cancel (or a failure elsewhere) takes effect between model calls.
            running, over_budget = _job_state(item.job_id)
            if not running:
                _close(item.pk, claim, WorkItem.Status.CANCELLED)
                return "job-not-running"
        if over_budget:
            progress.budget_exhausted = True
            break
        if not first_call:
            _refresh_index(item, progress)
        first_call = False
        asked = min(item.quota - progress.made, progress.per_call)
        # The first call uses the counts read with the item; later ones count again.
        progress.spare = _spare(job, progress, asked, open_items)
        open_items = None
        try:
            with _call_slot(slots, item, claim):
                _wait_for_slot(limiter, item, claim, source_tokens + (asked + progress.spare) * TOKENS_PER_PAIR)
                if progress.shared is not None:
                    # The wait may have been long: show the model what was stored meanwhile.
                    progress.shared.refresh(max_age=PROMPT_REFRESH_SECONDS)
                reply = llm.generate_pairs(
                    config,
                    source=source,
                    count=asked + progress.spare,
                    existing_questions=_prompt_questions(progress),
                    instructions=job.instructions,
                    params=params,
                    feedback=progress.feedback,
                    source_kind=item.chunk.source_type,
                    style=job.style,
                )
        except llm.LLMTransientError as exc:
            _handle_transient(item, claim, exc, attempt, limiter)
            return "failed-transient"
        except llm.LLMPermanentError as exc:
            _fail_model(item, claim, str(exc))
            services.job_finish_if_done(job_id=item.job_id)
            return "failed-permanent"
        if limiter is not None:
            limiter.tighten(reply.headers)
        stored = _absorb(item, claim, reply, asked, progress, source)
        if stored < 0:
            return "lost-lease"
    return _finish(item, claim, progress)


def _spare(job: TrainingJob, progress: _Progress, asked: int, open_items: tuple[int, int] | None = None) -> int:
    """One spare pair for a call in the last wave of a live job, else 0.

    A reply with a rejected pair (most often a near duplicate of a question another chunk
    stored while this call was out) needs a second call. Early in a job that call overlaps
    with other chunks' first calls; in the last wave (no more items pending than running)
    it runs after them and adds a whole model latency to the job. The spare costs its
    completion tokens; an unused one is counted as `spare_unused`. Mining asks for what
    the conversations hold, so it gets no spare.
    """
    if (
        not settings.MASSCER_SPARE_PAIR_AT_END
        or progress.shared is None
        or job.style == TrainingJob.Style.MINE
        or asked >= progress.per_call
    ):
        return 0
    pending, running = open_items if open_items is not None else hotsql.open_items(job.pk)
    return 1 if pending <= running else 0


def _absorb(
    item: WorkItem,
    claim: int,
    reply: llm.Reply,
    asked: int,
    progress: _Progress,
    source: str,
    price_factor: Decimal = Decimal(1),
) -> int:
    """Screen a reply and store what passes; the call is counted exactly once either way.

    `price_factor` scales the call's cost (batch calls are billed at a discount).
    """
    counters = _call_counters(item, reply, price_factor)
    try:
        stored, accepted, reasons = _screen_and_store(item, claim, reply, asked, progress, source, counters)
    except Exception:
        _record_call(item, counters)  # store_completions' transaction (and its count) rolled back
        raise
    if stored < 0:
        _record_call(item, counters)  # nothing was written, the call still happened
    item.calls += 1
    item.unavailable_since = None
    if stored > 0:
        progress.made += stored
        progress.chunk_questions.extend(c.question for c in accepted)
    progress.feedback = _feedback(reply, reasons, asked, len(accepted))
    return stored


def _through_outage(store: Callable[[], _T]) -> _T:
    """`store()`, tried again while the database is away (up to MASSCER_DB_OUTAGE_SECONDS):
    a reply that arrived was paid for, and the claim number keeps a late write from
    counting twice if someone took the item over meanwhile."""
    deadline = time.monotonic() + settings.MASSCER_DB_OUTAGE_SECONDS
    delay = 0.5
    while True:
        try:
            return store()
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("database unavailable while storing a reply; trying again in %.1f s", delay)
            connection.close()  # a broken connection is not reused
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _screen_and_store(
    item: WorkItem,
    claim: int,
    reply: llm.Reply,
    asked: int,
    progress: _Progress,
    source: str,
    counters: _CallCounters,
) -> tuple[int, list[Candidate], Counter[str]]:
    # The reply is in hand (and paid for): a database away for a moment must not lose it.
    _through_outage(lambda: _refresh_index(item, progress))
    candidates = [Candidate(p.question, p.answer, p.evidence) for p in reply.pairs]
    rejected: list[tuple[str, Candidate]] = []
    accepted, reasons = screen(
        candidates, source=source, index=progress.index, wanted=item.quota - progress.made, rejected=rejected
    )
    if reasons.get("duplicate"):
        taken = {c.question for c in accepted}
        progress.rejected_duplicates.extend(
            question
            for question in dict.fromkeys(c.question.strip() for c in candidates)
            if question and question not in taken and progress.index.is_duplicate(question)
        )
    if progress.spare and reasons.get("extra_dropped"):
        unused = min(progress.spare, reasons["extra_dropped"])
        reasons["extra_dropped"] -= unused
        reasons["spare_unused"] += unused
        if not reasons["extra_dropped"]:
            del reasons["extra_dropped"]
    _count_short_reply(item, reply, asked, progress, reasons)
    if reply.parse_error:
        reasons["invalid_output"] += 1
    if reply.finish_reason == "length":
        reasons["truncated"] += 1
        progress.per_call = max(1, asked // 2)
    # A few rejected replies go to the job page; the item is ours (claimed), so its own
    # copy of the samples is current, and they are written with the call's counters.
    samples = add_samples(item.samples or [], _rejections(reply, rejected, reasons))
    # The call is counted in the same transaction as its pairs: one UPDATE of the work
    # item and one of the job per call instead of two each. A live run whose quota is
    # now met closes the item in that transaction too.
    shared = progress.shared
    close = shared is not None and progress.made + len(accepted) >= item.quota
    # Questions another worker stored after the check above: the insert skips them (and
    # counts them as duplicates in `reasons`), and the item asks again for as many.
    skipped: list[str] = []
    def store() -> int:
        skipped.clear()  # an attempt the database cut short may have listed some
        return services.store_completions(
            item=item,
            claim=claim,
            pairs=[(c.question, c.answer, c.evidence) for c in accepted],
            model=reply.model,
            redacted=item.job.redact,
            reasons=reasons,
            calls=1,
            prompt_tokens=counters.prompt_tokens,
            completion_tokens=counters.completion_tokens,
            cost=counters.cost,
            start=progress.made if shared is not None else None,
            agent_ids=shared.agents() if shared is not None else None,
            close=close,
            samples=samples,
            duplicates=skipped,
        )

    stored = _through_outage(store)
    if skipped:
        taken = set(skipped)
        accepted = [c for c in accepted if c.question not in taken]
        progress.rejected_duplicates.extend(skipped)
        progress.raced += 1
    elif close and stored >= 0:
        progress.closed = True
    return stored, accepted, reasons


def _wants_more(item: WorkItem, progress: _Progress, budget: int) -> bool:
    """Whether the item should ask the model again (short, within its calls budget)."""
    return progress.made < item.quota and item.calls < budget + progress.raced and not progress.exhausted


def _item_calls_budget(item: WorkItem) -> int:
    return calls_budget(
        item.quota, per_call=settings.MASSCER_PAIRS_PER_CALL, calls_per_batch=settings.MASSCER_CALLS_PER_BATCH
    )


def _count_short_reply(
    item: WorkItem, reply: llm.Reply, asked: int, progress: _Progress, reasons: Counter[str]
) -> None:
    """Count the pairs a well-formed reply left out: the model's doing, unless (mining) the
    chunk holds fewer user questions than have been made and asked for."""
    if reply.parse_error or reply.finish_reason == "length" or len(reply.pairs) >= asked:
        return  # counted as invalid_output or truncated
    missing = asked - len(reply.pairs)
    if item.job.style == TrainingJob.Style.MINE:
        # The planner caps a chunk's quota at its user questions, so normally all of the
        # shortfall is the model's; a quota raised by "regenerate" can ask for more than the
        # chunk holds, and that part is the conversation's.
        held = max(0, services.user_turns(item.chunk) - progress.made)
        beyond = min(missing, max(0, asked - held))
        if beyond:
            reasons["source_exhausted"] += beyond
            missing -= beyond
        # Mining is asked for "up to N, never invent": a model that answered with fewer has
        # said it found no more, and asking it again would only invite invented questions.
        # So the item stops here either way (one call, not its whole calls budget); the
        # reason says whose doing the shortfall was, and a retry can ask again.
        progress.exhausted = True
    if missing:
        reasons["model_returned_fewer"] += missing


def _rejections(
    reply: llm.Reply, rejected: list[tuple[str, Candidate]], reasons: Counter[str]
) -> list[tuple[str, str]]:
    """What this call's output lost, as (reason, shortened text): the whole reply when it could not
    be used as a whole, then each rejected pair."""
    found: list[tuple[str, str]] = []
    if reply.finish_reason == "length":
        # The end shows where it was cut off.
        found.append(("truncated", shorten(reply.raw_text, keep_end=True) or "(no text)"))
    elif reply.parse_error:
        found.append(("invalid_output", shorten(reply.raw_text) or "(no text)"))
    found += [(reason, pair_text(pair)) for reason, pair in rejected]
    if not reply.pairs and not found and reasons.get("model_returned_fewer"):
        found.append(("model_returned_fewer", shorten(reply.raw_text) or "(no text)"))
    return found


def _close_done(item: WorkItem, claim: int, progress: _Progress) -> str:
    """Close a claimed item as done, recording why it fell short (calls or cost budget)."""
    fields: dict[str, object] = {}
    if progress.made < item.quota and not progress.exhausted:
        reasons = Counter(item.reasons or {})
        reasons["budget_exhausted" if progress.budget_exhausted else "calls_exhausted"] += 1
        fields["reasons"] = dict(reasons)
    _close(item.pk, claim, WorkItem.Status.DONE, **fields)
    return "done" if progress.made >= item.quota else "shortfall"


def _finish(item: WorkItem, claim: int, progress: _Progress) -> str:
    if progress.closed:
        # Closed with its last pairs (and counted in the job's chunks_done there).
        services.job_finish_if_done(job_id=item.job_id, chunks_counted=True)
        return "done"
    outcome = _close_done(item, claim, progress)
    services.job_finish_if_done(job_id=item.job_id)
    return outcome
