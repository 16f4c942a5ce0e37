"""One model call's request and reply, judged the same way for live and batch generation.

What the model is asked (`job_params`, `model_source`, `prompt_questions`), what a run
knows between calls (`Progress`), and taking one reply in (`reply_absorb`): validation,
storing (`completions.store_completions`), the call's counters and the feedback for the
next call. No transaction or row lock is held across a model call: callers read, call,
then hand the reply to `reply_absorb`, which writes in one short transaction.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F

from masscer.lib import llm
from masscer.lib.pricing import call_cost, parse_prices
from masscer.lib.redact import redact

from .. import questions
from ..models import Chunk, Completion, TrainingJob, WorkItem
from ..planning import calls_budget
from ..validation import Candidate, QuestionIndex, add_samples, pair_text, screen, shorten
from . import completions, judging, spans, spares, templates
from .chunks import user_turns

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# How many of a chunk's own questions the model is shown to avoid repeats.
MAX_EXISTING_IN_PROMPT = 60
# How old this process's copy of a job's questions may be when a work item starts.
PROMPT_REFRESH_SECONDS = 0.1


# --- the request --------------------------------------------------------------------------


def job_params(job: TrainingJob) -> llm.GenParams:
    return llm.GenParams(
        model=job.model,
        temperature=job.temperature if job.temperature is not None else settings.MASSCER_LLM_TEMPERATURE,
        top_p=job.top_p,
        max_tokens=job.max_tokens,
        frequency_penalty=job.frequency_penalty,
        stop=tuple(job.stop or ()),
    )


def job_guidance(job: TrainingJob, item: WorkItem) -> llm.Guidance:
    """The item's kind of question and the job's audience, difficulty, template and examples."""
    version = job.prompt_template  # read once per `job` object (Django keeps the related row)
    return llm.Guidance(
        question_type=item.question_type,
        audience=job.audience,
        difficulty=job.difficulty,
        template_system=version.system if version is not None else "",
        template_user=version.user if version is not None else "",
        examples=_seed_examples(job),
    )


def _seed_examples(job: TrainingJob) -> tuple[tuple[str, str, str], ...]:
    """The job's seed examples, read once per `job` object: a live run asks once per work item,
    a batch round once for all its items (the examples may change between runs, not within one)."""
    cached: tuple[tuple[str, str, str], ...] | None = getattr(job, "_seed_examples", None)
    if cached is None:
        cached = templates.seed_examples_for(job)
        job._seed_examples = cached  # type: ignore[attr-defined]
    return cached


def usage_pair(usage: llm.Usage) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens


def model_source(item: WorkItem) -> str:
    """The text of the item's span of chunks the model sees (and evidence is checked against)."""
    # Redaction happens before any text leaves for the model; evidence is checked
    # against the same redacted text the model saw.
    return spans.span_source(item).text


def source_overlap(item: WorkItem, source: str) -> int:
    """How many leading characters of `source` repeat the end of the previous chunk (0 if none).

    Document chunks overlap their neighbour by about MASSCER_CHUNK_OVERLAP tokens; the prompt
    tells the model so, so that it asks about the chunk's own part. (A conversation chunk's
    context line is labelled in its text already.)
    """
    chunk = item.chunk
    if not chunk.document_id or chunk.index == 0:
        return 0
    previous_end = (
        Chunk.objects.filter(document_id=chunk.document_id, index=chunk.index - 1).values_list("end", flat=True).first()
    )
    overlap = min(max(0, (previous_end or 0) - chunk.start), len(chunk.text))
    if overlap == 0 or overlap >= len(chunk.text):
        return 0
    if not item.job.redact:
        return overlap
    # The model sees redacted text: the overlap is where the redacted repeat ends, if it is a prefix.
    repeated = redact(chunk.text[:overlap])[0]
    return len(repeated) if source.startswith(repeated) else 0


def wants_more(item: WorkItem, progress: Progress, budget: int) -> bool:
    """Whether the item has more to do: pairs waiting for the judge, or pairs to ask for."""
    return bool(progress.held) or wants_pairs(item, progress, budget)


def wants_pairs(item: WorkItem, progress: Progress, budget: int) -> bool:
    """Whether the item should ask the model for pairs again (short, within its calls budget)."""
    short = progress.made + len(progress.held) < item.quota
    return short and item.calls < budget + progress.raced and not progress.exhausted


def item_calls_budget(item: WorkItem) -> int:
    budget = calls_budget(
        item.quota, per_call=settings.MASSCER_PAIRS_PER_CALL, calls_per_batch=settings.MASSCER_CALLS_PER_BATCH
    )
    # A judged reply costs two calls (generation and judge), both counted on the item.
    return budget * 2 if item.job.judge else budget


# --- what a run knows between calls ------------------------------------------------------------


@dataclass
class Progress:
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
    # The item's chunks and question type (its own questions are those of its type on them),
    # and how many completions each of those chunks has: the next ordinals there.
    chunk_ids: tuple[int, ...] = ()
    question_type: str = ""
    made_by_chunk: dict[int, int] = field(default_factory=dict)
    # The item was closed as done in the transaction that stored its last pairs.
    closed: bool = False
    # Pairs asked for in the current call beyond what the chunk still needs (the live
    # run's last-wave spare, `training.generation._spare`).
    spare: int = 0
    # Calls that lost a pair to another worker storing the same question first (the insert
    # skipped it). Not the model's doing: each gives the item one more call than its budget
    # (over a job at most N, since each such pair is a question another item stored).
    raced: int = 0
    # Validated pairs waiting for the judge (`services.judging`: kept in the item's
    # batch_state), the model that wrote them, and why the judge could not take them now.
    held: list[Candidate] = field(default_factory=list)
    held_model: str = ""
    deferred: judging.JudgeDeferred | None = None


def progress_load(item: WorkItem) -> Progress:
    """A live run's progress, on this process's shared copy of the job's questions."""
    # After the claim: every pair an earlier claim of this item stored is committed (a
    # stale holder cannot store any more), so the refreshed copy has all of them.
    shared = questions.for_job(item.job)
    # The questions only steer the prompt until the reply is screened (which refreshes
    # again), so a copy refreshed a moment ago by another thread will do, unless an earlier
    # claim of this item may have stored pairs: those count towards its quota.
    first_claim = item.attempts == 1 and item.made == 0
    shared.refresh(max_age=PROMPT_REFRESH_SECONDS if first_claim else 0.0)
    chunk_ids = spans.span_source(item).chunk_ids
    mine = shared.own(chunk_ids, item.question_type)
    held, held_model = judging.held_load(item)
    return Progress(
        held=held,
        held_model=held_model,
        index=questions.Overlay(shared.index, settings.MASSCER_NEAR_DUPLICATE_JACCARD),  # type: ignore[arg-type]
        seen_completion_id=shared.cursor,
        chunk_questions=mine,
        other_questions=[],
        made=len(mine),
        per_call=max(1, settings.MASSCER_PAIRS_PER_CALL),
        shared=shared,
        chunk_id=item.chunk_id,
        chunk_ids=chunk_ids,
        question_type=item.question_type,
        made_by_chunk=shared.made_by_chunk(chunk_ids, item.question_type),
    )


def progress_refresh(item: WorkItem, progress: Progress) -> None:
    # Other chunks of the same job store questions concurrently; fold in the new ones.
    if progress.shared is not None:
        progress.shared.refresh()
        progress.seen_completion_id = progress.shared.cursor
        return
    newer = Completion.objects.filter(job_id=item.job_id, pk__gt=progress.seen_completion_id).exclude(
        chunk_id__in=spans.span_source(item).chunk_ids, question_type__in=[item.question_type, ""]
    )
    for pk, question in newer.values_list("pk", "question"):
        progress.index.add(question)
        progress.other_questions.append(question)
        progress.seen_completion_id = max(progress.seen_completion_id, pk)


def prompt_questions(progress: Progress) -> list[str]:
    # Pairs waiting for the judge are the chunk's questions too (unless the judge rejects them).
    own = [*progress.chunk_questions, *(c.question for c in progress.held)][-MAX_EXISTING_IN_PROMPT:]
    room = MAX_EXISTING_IN_PROMPT - len(own)
    rejected = progress.rejected_duplicates[-room:] if room > 0 else []
    room -= len(rejected)
    if room <= 0:
        others: list[str] = []
    elif progress.shared is not None:
        others = progress.shared.others(progress.chunk_ids or (progress.chunk_id,), progress.question_type, room)
    else:
        others = progress.other_questions[-room:]
    return others + rejected + own


# --- the call's counters ---------------------------------------------------------------------


@dataclass
class _CallCounters:
    """What one model call (and its judge call, if any) adds to the work item's and the job's counters."""

    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    calls: int = 1

    def add(self, other: _CallCounters) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.calls += other.calls


def _call_counters(
    item: WorkItem, reply: llm.Reply | llm.JudgeReply, price_factor: Decimal = Decimal(1)
) -> _CallCounters:
    usage = reply.usage
    cost = call_cost(parse_prices(settings.MASSCER_LLM_PRICES), reply.model or item.job.model, *usage_pair(usage))
    return _CallCounters(usage.prompt_tokens, usage.completion_tokens, (cost or Decimal(0)) * price_factor)


def _record_call(item: WorkItem, counters: _CallCounters) -> None:
    """Count a model call on its own (normally `store_completions` counts it with its pairs)."""
    WorkItem.objects.filter(pk=item.pk).update(calls=F("calls") + counters.calls, unavailable_since=None)
    TrainingJob.objects.filter(pk=item.job_id).update(
        calls=F("calls") + counters.calls,
        prompt_tokens=F("prompt_tokens") + counters.prompt_tokens,
        completion_tokens=F("completion_tokens") + counters.completion_tokens,
        cost=F("cost") + counters.cost,
    )


# --- taking a reply in -----------------------------------------------------------------------


def reply_absorb(
    item: WorkItem,
    claim: int,
    reply: llm.Reply,
    asked: int,
    progress: Progress,
    source: str,
    price_factor: Decimal = Decimal(1),
    judge: judging.JudgeCall | None = None,
) -> int:
    """Screen a reply and store what passes; the call is counted exactly once either way.

    `price_factor` scales the call's cost (batch calls are billed at a discount). With
    `judge`, the pairs that pass validation are judged in one more call (counted with this
    one) and those below the job's threshold are rejected (`services.judging`).
    """
    counters = _call_counters(item, reply, price_factor)
    try:
        stored, accepted, reasons = _screen_and_store(
            item, claim, reply, asked, progress, source, counters, judge, price_factor
        )
    except Exception:
        _record_call(item, counters)  # store_completions' transaction (and its count) rolled back
        raise
    if stored < 0:
        _record_call(item, counters)  # nothing was written, the call still happened
    item.calls += counters.calls
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


def held_absorb(
    item: WorkItem,
    claim: int,
    progress: Progress,
    source: str,
    judge: judging.JudgeCall,
    price_factor: Decimal = Decimal(1),
) -> int:
    """Judge the pairs that waited for the judge (`Progress.held`) and store those it keeps.

    They are taken in again as the reply they came from, screened once more (another item
    may have stored the same question meanwhile); the judge call is counted, the earlier
    generation call was already. -1 if the claim was lost.
    """
    held, progress.held, progress.spare, progress.deferred = progress.held, [], 0, None
    pairs = [llm.Pair(c.question, c.answer, c.evidence) for c in held]
    earlier = llm.Reply(pairs=pairs, finish_reason="stop", usage=llm.Usage(0, 0), parse_error=None, raw_text="",
                        model=progress.held_model or item.job.model)  # fmt: skip
    counters = _CallCounters(0, 0, Decimal(0), calls=0)
    try:
        stored, accepted, reasons = _screen_and_store(
            item, claim, earlier, len(held), progress, source, counters, judge, price_factor
        )
    except Exception:
        if counters.calls:
            _record_call(item, counters)
        raise
    if stored < 0 and counters.calls:
        _record_call(item, counters)
    item.calls += counters.calls
    if stored > 0:
        progress.made += stored
        progress.chunk_questions.extend(c.question for c in accepted)
    progress.feedback = _feedback(earlier, reasons, len(held), len(accepted))
    return stored


def _store_with_held(item: WorkItem, claim: int, progress: Progress, store: Callable[[], int]) -> int:
    """`store()`, and the pairs waiting for the judge kept in the item in the same transaction
    (so that a paid reply's pairs are not lost between the two)."""
    state = judging.held_state_of(item, progress.held, progress.held_model)
    if state is None:
        return store()
    with transaction.atomic():
        stored = store()
        if stored >= 0:
            judging.held_write(item, claim, state)
    if stored >= 0:
        item.batch_state = state
    return stored


def _screen_and_store(
    item: WorkItem,
    claim: int,
    reply: llm.Reply,
    asked: int,
    progress: Progress,
    source: str,
    counters: _CallCounters,
    judge: judging.JudgeCall | None = None,
    price_factor: Decimal = Decimal(1),
) -> tuple[int, list[Candidate], Counter[str]]:
    # The reply is in hand (and paid for): a database away for a moment must not lose it.
    _through_outage(lambda: progress_refresh(item, progress))
    candidates = [Candidate(p.question, p.answer, p.evidence) for p in reply.pairs]
    rejected: list[tuple[str, Candidate]] = []
    extras: list[Candidate] = []
    accepted, reasons = screen(
        candidates,
        source=source,
        index=progress.index,
        wanted=item.quota - progress.made - len(progress.held),
        rejected=rejected,
        extras=extras,
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
    scores: list[dict[str, object] | None] | None = None
    if judge is not None and accepted:  # the judge pass (services.judging), counted with this call
        verdicts = judging.judge_candidates(item, accepted, call=judge, spent=counters.cost)
        if verdicts.reply is not None:
            counters.add(_call_counters(item, verdicts.reply, price_factor))
        judging.account(verdicts, reasons, rejected, progress.rejected_duplicates)
        progress.budget_exhausted = progress.budget_exhausted or verdicts.over_budget
        accepted, scores = verdicts.kept, verdicts.scores
        if verdicts.held:  # the judge cannot be asked now: the pairs wait for it in the item
            progress.held.extend(verdicts.held)
            progress.held_model, progress.deferred = reply.model, verdicts.deferred
    # A few rejected replies go to the job page; the item is ours (claimed), so its own
    # copy of the samples is current, and they are written with the call's counters.
    samples = add_samples(item.samples or [], _rejections(reply, rejected, reasons))
    # The call is counted in the same transaction as its pairs: one UPDATE of the work
    # item and one of the job per call instead of two each. A live run whose quota is
    # now met closes the item in that transaction too.
    shared = progress.shared
    # Each pair goes to the chunk of the item's span its evidence comes from.
    span = spans.span_source(item)
    # Questions another worker stored after the check above: the insert skips them (and
    # counts them as duplicates). Valid spare pairs of the same reply replace them (not in
    # a judged job: a spare has no scores); the item asks again only for the rest.
    skipped: list[str] = []
    stored_total, kept_total = 0, []
    batch, scored, batch_reasons = accepted, scores, reasons

    def store(
        pairs: list[Candidate], judged: list[dict[str, object] | None] | None, why: Counter[str], done: int
    ) -> int:
        skipped.clear()  # an attempt the database cut short may have listed some
        first = why is reasons  # the reply's own pairs carry the call's counters
        return completions.store_completions(
            item=item,
            claim=claim,
            pairs=[(c.question, c.answer, c.evidence) for c in pairs],
            judged=judged,
            model=reply.model,
            redacted=item.job.redact,
            reasons=why,
            calls=counters.calls if first else 0,
            prompt_tokens=counters.prompt_tokens if first else 0,
            completion_tokens=counters.completion_tokens if first else 0,
            cost=counters.cost if first else 0,
            start=dict(progress.made_by_chunk) if shared is not None else None,
            agent_ids=shared.agents() if shared is not None else None,
            close=shared is not None and progress.made + done + len(pairs) >= item.quota,
            samples=samples if first else None,
            duplicates=skipped,
            chunks=[span.chunk_of(c.evidence) for c in pairs],
        )

    while True:
        stored = _through_outage(
            lambda: _store_with_held(
                item, claim, progress, lambda: store(batch, scored, batch_reasons, stored_total)  # noqa: B023
            )
        )
        if stored < 0:
            return (stored_total or stored), kept_total, reasons
        kept = [c for c in batch if c.question not in set(skipped)]
        for c in kept:
            home = span.chunk_of(c.evidence)
            progress.made_by_chunk[home] = progress.made_by_chunk.get(home, 0) + 1
        stored_total += stored
        kept_total.extend(kept)
        if not skipped:
            progress.closed = progress.closed or (shared is not None and progress.made + stored_total >= item.quota)
            break
        progress.rejected_duplicates.extend(skipped)
        progress.raced += 1
        batch = _replacements(progress, extras, source, len(skipped)) if judge is None else []
        if not batch:
            break
        extras = [c for c in extras if c not in batch]
        scored, batch_reasons = None, _spares_used(reasons, len(batch))
    stored, accepted = stored_total, kept_total
    if extras and judge is None and shared is not None and progress.closed:
        # The item is full: its valid unused pairs may spare a short item a call (`spares`).
        _through_outage(lambda: spares.bank(item, claim, extras, reply.model))
    return stored, accepted, reasons


def _replacements(progress: Progress, extras: list[Candidate], source: str, count: int) -> list[Candidate]:
    """Up to `count` of a reply's valid spare pairs that are still new to the job."""
    if not extras:
        return []
    if progress.shared is not None:
        _through_outage(lambda: progress.shared.refresh(max_age=0.0))  # type: ignore[union-attr]
    replacements, _ = screen(extras, source=source, index=progress.index, wanted=count)
    return replacements


def _spares_used(reasons: Counter[str], count: int) -> Counter[str]:
    """The item's reasons' change when `count` spare (or extra) pairs are stored after all."""
    change: Counter[str] = Counter()
    for key in ("spare_unused", "extra_dropped"):
        used = min(count, reasons.get(key, 0))
        if used:
            change[key] -= used
            reasons[key] -= used
            if not reasons[key]:
                del reasons[key]
            count -= used
    return change


# --- judging the reply ------------------------------------------------------------------------


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
        if reasons.get("judge_low"):
            problems.append("some answers were not supported by their evidence and the source")
        if problems:
            return "In your previous reply " + "; ".join(problems) + "."
    return None


def _count_short_reply(
    item: WorkItem, reply: llm.Reply, asked: int, progress: Progress, reasons: Counter[str]
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
        held = max(0, user_turns(item.chunk) - progress.made)
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
