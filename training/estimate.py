"""What a job will cost before it runs: chunks used, model calls, tokens and money (pure, no database).

The numbers follow the planner and the generation loop: a document's chunks are grouped into
spans like `planning.group_spans` does (at least `min_pairs` per call within `span_tokens`), N
is spread over the spans like `planning.allocate` does (or over the chunks, capped by the user
questions, for "mine"), each span asks for at most `pairs_per_call` pairs per call, and every
call sends the span's text, the fixed prompt and up to 60 earlier questions (so the model does
not repeat them). Calls that must be
repeated (invalid output, duplicates) are not counted; `calls_max` is the hard bound.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from masscer.lib.pricing import MILLION, parse_prices

from .planning import allocate, allocate_capped, calls_budget, group_spans
from .question_types import MULTI_HOP, MULTI_HOP_SPAN, SPREAD_PHASES, neighbour_units, type_counts, with_fallback

# Tokens of the instructions, rules and reply format around the source text.
PROMPT_OVERHEAD_TOKENS = 320
# One earlier question shown to the model so it does not repeat it.
QUESTION_TOKENS = 20
# The prompt shows at most this many earlier questions (services.replies.MAX_EXISTING_IN_PROMPT).
MAX_EXISTING_IN_PROMPT = 60
# One question/answer/evidence triple in the reply, with its JSON punctuation.
PAIR_TOKENS = 90
REPLY_OVERHEAD_TOKENS = 10
# The judge pass: its instructions, and one pair's scores and reasons in its reply.
JUDGE_OVERHEAD_TOKENS = 250
JUDGE_SCORE_TOKENS = 60

Price = tuple[Decimal, Decimal]  # per 1M prompt and completion tokens (masscer.lib.pricing)


@dataclass(frozen=True)
class Estimate:
    requested: int
    planned: int  # what the sources can give (mine: capped by the user questions)
    chunks_total: int
    chunks_used: int
    calls: int
    calls_max: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal | None  # None: no price configured for the model
    projected: bool  # chunk sizes projected from token counts (a source not chunked yet)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def shortfall(self) -> int:
        return max(0, self.requested - self.planned)


def price_for(spec: str, model: str) -> Price | None:
    """The model's (prompt, completion) price per 1M tokens from MASSCER_LLM_PRICES; None if unpriced or unreadable."""
    try:
        return parse_prices(spec).get(model)
    except ValueError:
        return None


def project_chunks(token_count: int, *, budget: int, overlap: int) -> list[int]:
    """Chunk sizes of a text of `token_count` tokens not chunked yet (the splitter's budget and overlap)."""
    if token_count <= 0:
        return []
    if token_count <= budget:
        return [token_count]
    step = max(1, budget - max(0, overlap))
    count = math.ceil((token_count - overlap) / step)
    total = token_count + (count - 1) * overlap
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def user_turns(text: str) -> int:
    """User questions in a rendered conversation chunk (what "mine" can use)."""
    return sum(1 for line in text.splitlines() if line.startswith("[user]"))


def estimate(
    *,
    count: int,
    chunk_tokens: Sequence[int],
    pairs_per_call: int,
    calls_per_batch: int,
    caps: Sequence[int] | None = None,
    max_tokens: int | None = None,
    price: Price | None = None,
    projected: bool = False,
    judge: bool = False,
    sources: Sequence[Hashable | None] | None = None,
    min_pairs: int = 1,
    span_tokens: int = 0,
    types: Mapping[str, int] | None = None,
) -> Estimate:
    """The estimate for `count` completions over chunks of these sizes.

    `caps` (one per chunk) switches to the mining plan: a chunk gives at most its cap.
    `judge`: every generation call is followed by a judge call over its pairs. `sources` (one
    per chunk, in order; None for a chunk that is never grouped, as a conversation's) lets
    consecutive chunks of one source share a call, with `min_pairs` and `span_tokens` as
    MASSCER_MIN_PAIRS_PER_CALL and MASSCER_SPAN_MAX_TOKENS; without it every chunk is asked alone.
    `types` (the job's question-type shares) plans each type's count apart, as the planner
    does: each has its own work items (multi-hop: two neighbouring chunks each).
    """
    per_call = max(1, pairs_per_call)
    plan: list[tuple[range, int]] = []
    for question_type, share in _type_counts(types, count, chunk_tokens, sources).items():
        if caps is not None:
            spans = [range(i, i + 1) for i in range(len(chunk_tokens))]
            quotas = allocate_capped(share, caps)
        elif question_type == MULTI_HOP:
            spans = _neighbours(chunk_tokens, sources)
            quotas = allocate(
                share, [sum(chunk_tokens[span.start : span.stop]) for span in spans], phase=SPREAD_PHASES[question_type]
            )
        else:
            spans = _spans(share, chunk_tokens, sources, min(min_pairs, per_call), span_tokens)
            quotas = allocate(
                share, [sum(chunk_tokens[span.start : span.stop]) for span in spans], phase=SPREAD_PHASES[question_type]
            )
        plan.extend(zip(spans, quotas, strict=True))
    calls = calls_max = prompt = completion = made = 0
    for span, quota in plan:
        if quota <= 0:
            continue
        tokens = sum(chunk_tokens[span.start : span.stop])
        calls_max += calls_budget(quota, per_call=per_call, calls_per_batch=calls_per_batch) * (2 if judge else 1)
        left = quota
        while left > 0:
            pairs = min(per_call, left)
            calls += 1
            prompt += PROMPT_OVERHEAD_TOKENS + tokens + min(made, MAX_EXISTING_IN_PROMPT) * QUESTION_TOKENS
            reply = REPLY_OVERHEAD_TOKENS + pairs * PAIR_TOKENS
            completion += min(reply, max_tokens) if max_tokens else reply
            if judge:
                calls += 1
                prompt += JUDGE_OVERHEAD_TOKENS + tokens + pairs * PAIR_TOKENS
                completion += REPLY_OVERHEAD_TOKENS + pairs * JUDGE_SCORE_TOKENS
            made += pairs
            left -= pairs
    cost = None
    if price is not None:
        cost = (Decimal(prompt) * price[0] + Decimal(completion) * price[1]) / MILLION
    return Estimate(
        requested=count,
        planned=sum(quota for _, quota in plan),
        chunks_total=len(chunk_tokens),
        chunks_used=len({i for span, quota in plan if quota > 0 for i in span}),
        calls=calls,
        calls_max=calls_max,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        projected=projected,
    )


def _keys(chunk_tokens: Sequence[int], sources: Sequence[Hashable | None] | None) -> list[tuple[Any, int]]:
    """(source, position) per chunk; a chunk without a source is a source of its own."""
    if sources is None:
        return [((None, i), i) for i in range(len(chunk_tokens))]
    return [((source, 0) if source is not None else (None, i), i) for i, source in enumerate(sources)]


def _neighbours(chunk_tokens: Sequence[int], sources: Sequence[Hashable | None] | None) -> list[range]:
    """The multi-hop units the planner makes: two neighbouring chunks of one source each."""
    return [range(unit[0], unit[-1] + 1) for unit in neighbour_units(_keys(chunk_tokens, sources), MULTI_HOP_SPAN)]


def _type_counts(
    types: Mapping[str, int] | None, count: int, chunk_tokens: Sequence[int], sources: Sequence[Hashable | None] | None
) -> dict[str, int]:
    """Each question type's count (`question_types.type_counts`, multi-hop falling back to factual)."""
    counts = type_counts(types or {}, count)
    return with_fallback(counts, bool(_neighbours(chunk_tokens, sources)))


def _spans(
    count: int, chunk_tokens: Sequence[int], sources: Sequence[Hashable | None] | None, min_pairs: int, span_tokens: int
) -> list[range]:
    """The spans the planner would make (`services.jobs`): one chunk each without `sources`."""
    if sources is None:
        return [range(i, i + 1) for i in range(len(chunk_tokens))]
    keys = [((source, 0) if source is not None else (None, i), i) for i, source in enumerate(sources)]
    return group_spans(chunk_tokens, keys, count=count, min_pairs=min_pairs, max_tokens=span_tokens)
