"""The judge pass: one model call scores a reply's accepted pairs before they are stored.

`replies.reply_absorb` hands the pairs that passed validation to `judge_candidates`, which
makes one judge call for all of them (through `call`, which the live run wraps in the same
rate-limit wait and call slot as generation) and splits them into the kept ones, with their
scores, and the ones whose faithfulness is below the job's threshold: those become
`judge_low` rejections and are topped up like any other rejection, so a job still delivers
exactly N pairs, all at or above the threshold, or says why not.

What happens when the judge cannot say (decided here, once):
- the judge call fails (transient or permanent): the pairs are stored unjudged (`judge` null)
  and a warning is logged. The generation call was paid for; the pairs passed validation.
- the reply does not parse, or leaves a pair out: those pairs are stored unjudged too. No
  re-ask: the calls budget bounds a work item, and a second judge call per reply would
  halve it. Unjudged pairs are visible (null in the API, export and review filters).
- the job reached its budget before the judge call: the pairs are not stored (they could
  not be checked) and count as `budget_exhausted`; the run stops as for any budget.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from masscer.lib import llm

from ..models import TrainingJob, WorkItem
from ..validation import Candidate

logger = logging.getLogger(__name__)

# One judge call: the pairs in, the judge's reply out (or an llm error raised).
JudgeCall = Callable[[Sequence[llm.Pair]], llm.JudgeReply]


@dataclass
class Verdicts:
    """What the judge made of a reply's accepted pairs."""

    kept: list[Candidate]
    # The scores of each kept pair (as stored on the completion), None when not judged.
    scores: list[dict[str, Any] | None]
    low: list[Candidate] = field(default_factory=list)
    reply: llm.JudgeReply | None = None
    over_budget: bool = False


def judge_candidates(
    item: WorkItem, accepted: Sequence[Candidate], *, call: JudgeCall, spent: Decimal
) -> Verdicts:
    """Judge `accepted` in one call; `spent` is what the reply being judged cost (not yet counted)."""
    if not accepted:
        return Verdicts(kept=[], scores=[])
    if _over_budget(item.job_id, spent):
        return Verdicts(kept=[], scores=[], low=list(accepted), over_budget=True)
    pairs = [llm.Pair(c.question, c.answer, c.evidence) for c in accepted]
    try:
        reply = call(pairs)
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
