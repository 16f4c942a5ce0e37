"""The judge pass: one model call scores a reply's accepted pairs before they are stored.

`replies.reply_absorb` hands the pairs that passed validation to `judge_candidates`, which
makes one judge call for all of them (through `call`, which the live run wraps in the same
rate-limit wait and call slot as generation) and splits them into the kept ones, with their
scores, and the ones whose faithfulness is below the job's threshold: those become
`judge_low` rejections and are topped up like any other rejection, so a job still delivers
exactly N pairs, all at or above the threshold, or says why not.

Pairs that wait for the judge. A generation reply is paid for; when its judge call cannot
be made now, its pairs are *held* (`Verdicts.held`, kept in the work item's `batch_state`
under "held", written in the transaction that counts the call) and judged first on the
item's next turn (`replies.held_absorb`), before it asks for more. That happens when:
- a live judge call gets no call slot or rate-limit place in time, or fails transiently
  (the item is handed back with the backoff, like a generation call: `JudgeDeferred`);
- batch mode: a round's validated pairs are judged by a judge request in the next round,
  alongside the item's next generation request (`later`, `Answered`).

What happens when the judge cannot say (decided here, once):
- the judge call fails permanently, or transiently for longer than
  MASSCER_MODEL_UNREACHABLE_SECONDS: the pairs are stored unjudged (`judge` null) and a
  warning is logged. The generation call was paid for; the pairs passed validation.
- the reply does not parse, or leaves a pair out: those pairs are stored unjudged too. No
  re-ask: the calls budget bounds a work item, and a second judge call per reply would
  halve it. Unjudged pairs are visible (null in the API, export and review filters).
- the job reached its budget before the judge call: the pairs are not stored (they could
  not be checked) and count as `judge_unchecked`; the run stops as for any budget.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from masscer.lib import llm

from ..models import TrainingJob, WorkItem
from ..validation import Candidate
from . import retry

logger = logging.getLogger(__name__)

# One judge call: the pairs in, the judge's reply out (or an llm error or JudgeDeferred raised).
JudgeCall = Callable[[Sequence[llm.Pair]], llm.JudgeReply]
# Where the pairs waiting for the judge are kept in `WorkItem.batch_state`.
HELD_KEY = "held"


class JudgeDeferred(Exception):
    """The judge cannot be asked now; the pairs wait for it in the work item.

    `countdown`: when to try again (seconds); `error`: the transient error that deferred it,
    if one did (the item is then unavailable since `since`, as after a generation error).
    """

    def __init__(
        self,
        countdown: float,
        reason: str,
        *,
        error: llm.LLMTransientError | None = None,
        since: datetime | None = None,
    ) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.error = error
        self.since = since


@dataclass
class Verdicts:
    """What the judge made of a reply's accepted pairs."""

    kept: list[Candidate]
    # The scores of each kept pair (as stored on the completion), None when not judged.
    scores: list[dict[str, Any] | None]
    low: list[Candidate] = field(default_factory=list)
    reply: llm.JudgeReply | None = None
    over_budget: bool = False
    # Pairs the judge could not take now: they wait in the work item (`deferred` says why).
    held: list[Candidate] = field(default_factory=list)
    deferred: JudgeDeferred | None = None


def judge_candidates(
    item: WorkItem, accepted: Sequence[Candidate], *, call: JudgeCall, spent: Decimal
) -> Verdicts:
    """Judge `accepted` in one call; `spent` is what the reply being judged cost (not yet counted)."""
    if not accepted:
        return Verdicts(kept=[], scores=[])
    if not isinstance(call, Answered) and _over_budget(item.job_id, spent):
        return Verdicts(kept=[], scores=[], low=list(accepted), over_budget=True)
    pairs = [llm.Pair(c.question, c.answer, c.evidence) for c in accepted]
    try:
        reply = call(pairs)
    except JudgeDeferred as exc:
        return Verdicts(kept=[], scores=[], held=list(accepted), deferred=exc)
    except llm.LLMError as exc:
        logger.warning("judge call failed for work item %s; storing its pairs unjudged: %s", item.pk, exc)
        return Verdicts(kept=list(accepted), scores=[None] * len(accepted))
    if reply.parse_error:
        logger.warning("judge reply for work item %s: %s; unscored pairs stored unjudged", item.pk, reply.parse_error)
    return _split(accepted, reply, item.job.judge_threshold)


def account(
    verdicts: Verdicts, reasons: Counter[str], rejected: list[tuple[str, Candidate]], rejected_questions: list[str]
) -> None:
    """Count the pairs the judge pass rejected, with the reply's other rejections."""
    if not verdicts.low:
        return
    reason = "judge_unchecked" if verdicts.over_budget else "judge_low"
    reasons[reason] += len(verdicts.low)
    rejected.extend((reason, c) for c in verdicts.low)
    if not verdicts.over_budget:
        # Shown to the model with the rejected duplicates, so that it does not offer them again.
        rejected_questions.extend(c.question for c in verdicts.low)


# --- when the judge cannot be asked now ---------------------------------------------------------


def transient(item: WorkItem, exc: llm.LLMTransientError, attempt: int) -> JudgeDeferred | llm.LLMError:
    """What a transient judge error means: wait and judge again, unless the model has been
    unreachable too long (then the error stands and the pairs are stored unjudged)."""
    since = item.unavailable_since or timezone.now()
    if retry.unreachable(since, exc) is not None:
        return exc
    return JudgeDeferred(retry.backoff(attempt, exc.retry_after), str(exc), error=exc, since=since)


def later(pairs: Sequence[llm.Pair]) -> llm.JudgeReply:
    """Batch mode's judge call at ingest: the pairs are judged by the next round."""
    raise JudgeDeferred(0.0, "judged in the next round")


@dataclass(frozen=True)
class Answered:
    """The judge call a batch round made already (paid for, so no budget check): its answer,
    `outcome`, scored the pairs `sent`; a call with fewer of them (the others were rejected
    as duplicates meanwhile) gets their scores."""

    item: WorkItem
    outcome: llm.JudgeReply | llm.LLMError
    sent: Sequence[Candidate]
    attempt: int = 0

    def __call__(self, pairs: Sequence[llm.Pair]) -> llm.JudgeReply:
        if isinstance(self.outcome, llm.LLMTransientError):
            raise transient(self.item, self.outcome, self.attempt)
        if isinstance(self.outcome, llm.LLMError):
            raise self.outcome
        by_question = {c.question: score for c, score in zip(self.sent, self.outcome.scores, strict=False)}
        return replace(self.outcome, scores=[by_question.get(p.question) for p in pairs])


# --- the pairs waiting for the judge, kept in the work item ------------------------------------


def held_load(item: WorkItem) -> tuple[list[Candidate], str]:
    """The pairs waiting for the judge in `item` and the model that wrote them."""
    state = item.batch_state or {}
    if not item.job.judge or not isinstance(state.get(HELD_KEY), list):
        return [], ""
    held = [Candidate(*map(str, entry[:3])) for entry in state[HELD_KEY] if isinstance(entry, list) and len(entry) >= 3]
    return held, str(state.get("held_model") or "")


def held_state(held: Sequence[Candidate], model: str) -> dict[str, Any]:
    """The `batch_state` keys that keep `held` (empty when nothing waits)."""
    if not held:
        return {HELD_KEY: []}
    return {HELD_KEY: [[c.question, c.answer, c.evidence] for c in held], "held_model": model}


def held_state_of(item: WorkItem, held: Sequence[Candidate], model: str) -> dict[str, Any] | None:
    """The item's `batch_state` keeping `held`, or None when it keeps them already."""
    current = item.batch_state or {}
    state = {**current, **held_state(held, model)}
    return None if state == current or (not held and not current.get(HELD_KEY)) else state


def held_write(item: WorkItem, claim: int, state: dict[str, Any]) -> None:
    """Write `state` (`held_state_of`) to the claimed item, in the caller's transaction."""
    WorkItem.objects.filter(pk=item.pk, attempts=claim).update(batch_state=state)


# --- helpers ------------------------------------------------------------------------------------


def _split(accepted: Sequence[Candidate], reply: llm.JudgeReply, threshold: int) -> Verdicts:
    verdicts = Verdicts(kept=[], scores=[], reply=reply)
    for candidate, score in zip(accepted, reply.scores, strict=True):
        if score is not None and score.faithfulness < threshold:
            verdicts.low.append(candidate)
            continue
        verdicts.kept.append(candidate)
        verdicts.scores.append(score.as_dict() if score is not None else None)
    return verdicts


def _over_budget(job_id: int, spent: Decimal) -> bool:
    row = TrainingJob.objects.filter(pk=job_id).values_list("budget", "cost").first()
    if row is None or row[0] is None:
        return False
    budget, cost = row
    return cost + spent >= budget
