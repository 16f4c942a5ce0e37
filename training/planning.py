"""How N completions are spread over a job's chunks (pure functions, no database)."""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence


def allocate(count: int, token_counts: Sequence[int], *, phase: float = 0.5) -> list[int]:
    """Quotas per chunk that sum to `count`.

    With at least as many completions as chunks, quotas are proportional to the chunks'
    tokens (largest remainder, ties to the earlier chunk). With fewer, one each goes to
    chunks spread evenly over the sources, so a short job still samples the whole text:
    `phase` (0 to 1) of the way into each of `count` equal stretches (the middle by default;
    the question types of one job each use their own, so they read different chunks).
    """
    chunks = len(token_counts)
    if count <= 0 or chunks == 0:
        return [0] * chunks
    if count < chunks:
        return _spread(count, chunks, phase)
    return _largest_remainder(count, token_counts)


def _spread(count: int, chunks: int, phase: float = 0.5) -> list[int]:
    quotas = [0] * chunks
    for i in range(count):
        # `phase` of the way into the i-th of `count` equal stretches (each one chunk or more).
        quotas[min(chunks - 1, math.floor((i + phase) * chunks / count))] += 1
    return quotas


def _largest_remainder(count: int, token_counts: Sequence[int]) -> list[int]:
    weights = [max(1, tokens) for tokens in token_counts]
    total = sum(weights)
    exact = [count * weight / total for weight in weights]
    quotas = [math.floor(value) for value in exact]
    missing = count - sum(quotas)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[:missing]:
        quotas[i] += 1
    return quotas


def calls_budget(quota: int, *, per_call: int, calls_per_batch: int) -> int:
    """Model calls a chunk may spend: `calls_per_batch` tries for each batch of pairs."""
    batches = max(1, math.ceil(quota / max(1, per_call)))
    return batches * max(1, calls_per_batch)


def allocate_capped(count: int, caps: Sequence[int]) -> list[int]:
    """Quotas that never exceed each chunk's cap (mining: its user questions).

    When the caps add up to less than `count`, every chunk gets its cap and the
    job records the difference as a shortfall.
    """
    if sum(caps) <= count:
        return list(caps)
    eligible = [i for i, cap in enumerate(caps) if cap > 0]
    quotas = [0] * len(caps)
    # Proportional shares stay under each cap (share < cap, so its ceiling <= cap).
    for i, quota in zip(eligible, allocate(count, [caps[i] for i in eligible]), strict=True):
        quotas[i] = min(quota, caps[i])
    return quotas


# A chunk is asked for at most one pair per this many tokens of its text: the most its text
# can give when other chunks' missing pairs are moved to it (`hand_on`).
TOKENS_PER_PAIR_AT_MOST = 40


def pair_room(tokens: int, quota: int) -> int:
    """How many more pairs a chunk of `tokens` could be asked for beyond its `quota`."""
    return max(0, tokens // TOKENS_PER_PAIR_AT_MOST - quota)


def hand_on(missing: int, rooms: Sequence[int]) -> list[int]:
    """Shares of `missing` pairs for chunks with `rooms` pairs of unused text each.

    In proportion to each chunk's room (largest remainder, ties to the earlier chunk), never
    above it; fewer than `missing` in all only when the rooms add up to less.
    """
    if missing <= 0 or not any(rooms):
        return [0] * len(rooms)
    if sum(rooms) <= missing:
        return list(rooms)
    shares = [0] * len(rooms)
    eligible = [i for i, room in enumerate(rooms) if room > 0]
    # A share is at most the ceiling of missing * room / total rooms, so never above its room.
    for i, share in zip(eligible, _largest_remainder(missing, [rooms[i] for i in eligible]), strict=True):
        shares[i] = share
    return shares


def group_spans(
    token_counts: Sequence[int],
    keys: Sequence[tuple[Hashable, int]],
    *,
    count: int,
    min_pairs: int,
    max_tokens: int,
) -> list[range]:
    """Positions of the chunks grouped into spans (one work item each): consecutive chunks of
    one source, added until the span's share of `count` (in proportion to tokens, as
    `allocate` gives it) reaches `min_pairs` or one more chunk would take it over `max_tokens`.

    One call then asks for about `min_pairs` pairs or more instead of a few per chunk. Where
    `count` is too small for that, spans grow to `max_tokens`, so the items (which `allocate`
    spreads evenly when there are fewer pairs than spans) cover as much of the text as they
    can. `keys` are (source, chunk index) in job order: a span never crosses a source or a gap
    in its indexes. `max_tokens` <= 0 keeps one chunk per span.
    """
    chunks = len(token_counts)
    if max_tokens <= 0 or count <= 0:
        return [range(i, i + 1) for i in range(chunks)]
    weights = [max(1, tokens) for tokens in token_counts]
    per_token = count / sum(weights) if weights else 0.0
    spans: list[range] = []
    start = tokens = 0
    for i, weight in enumerate(weights):
        if i > start and _continues(keys, i) and tokens + weight <= max_tokens and tokens * per_token < min_pairs:
            tokens += weight
            continue
        if i > start:
            spans.append(range(start, i))
        start, tokens = i, weight
    if chunks:
        spans.append(range(start, chunks))
    return spans


def _continues(keys: Sequence[tuple[Hashable, int]], i: int) -> bool:
    """Whether the chunk at `i` is the next chunk of the same source as the one before it."""
    return keys[i][0] == keys[i - 1][0] and keys[i][1] == keys[i - 1][1] + 1
