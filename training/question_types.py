"""The kinds of question a job can ask for, and how N is spread over them (no database)."""
from __future__ import annotations

from collections.abc import Mapping

from .planning import allocate

# key -> label. A job's `question_types` maps some of these keys to shares.
QUESTION_TYPES: dict[str, str] = {
    "factual": "Factual",
}
DEFAULT_TYPE = "factual"


def type_counts(shares: Mapping[str, int], count: int) -> dict[str, int]:
    """How many of `count` pairs each type gets: its share, largest remainder (ties to the
    type listed first); all of them factual when no shares are given."""
    chosen = [(key, share) for key, share in shares.items() if share > 0]
    if not chosen:
        return {DEFAULT_TYPE: count}
    counts = allocate(count, [share for _, share in chosen]) if count >= len(chosen) else None
    if counts is None:  # fewer pairs than types: the largest shares first
        order = sorted(range(len(chosen)), key=lambda i: (-chosen[i][1], i))
        counts = [1 if i in order[:count] else 0 for i in range(len(chosen))]
    return {key: n for (key, _), n in zip(chosen, counts, strict=True) if n > 0}
