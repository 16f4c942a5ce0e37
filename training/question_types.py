"""The kinds of question a job can ask for, its audience and difficulty, and how N is spread
over the kinds (no database).

Every door (CLI `--types factual=2,procedural=1`, API object, Train dialog) turns what the user
typed into shares with `parse_types` / `clean_types`, so the messages are the same everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError

from .planning import allocate

# key -> label. A job's `question_types` maps some of these keys to shares; the prompt rule of
# each lives in `masscer.lib.llm.prompts.QUESTION_TYPE_RULES` (same keys; a test keeps them together).
QUESTION_TYPES: dict[str, str] = {
    "factual": "Factual",
    "procedural": "Procedural (how to)",
    "explanatory": "Explanatory (why)",
    "comparison": "Comparison",
    "multi_hop": "Multi-hop (two passages)",
    "unanswerable": "Unanswerable (the source does not say)",
}
DEFAULT_TYPE = "factual"
# Where in each stretch of text a type's items go when it has fewer pairs than there are
# chunks (`planning.allocate`): the default type in the middle, as an untyped job; the others
# elsewhere, so that a job's types read different chunks (more of the text, fewer near repeats).
SPREAD_PHASES: dict[str, float] = {
    "factual": 0.5,
    "procedural": 0.25,
    "explanatory": 0.75,
    "comparison": 0.125,
    "multi_hop": 0.375,
    "unanswerable": 0.875,
}
# A multi-hop question reads this many neighbouring chunks of one source.
MULTI_HOP = "multi_hop"
MULTI_HOP_SPAN = 2
# A share is a weight, not a count: "factual=2,procedural=1" is two thirds factual.
MAX_SHARE = 1000

# "" (no level stated) first: what the Train dialog offers, in order.
DIFFICULTIES: dict[str, str] = {"": "Any", "easy": "Easy", "medium": "Medium", "hard": "Hard"}
AUDIENCE_MAX_CHARS = 200


def _known() -> str:
    return ", ".join(QUESTION_TYPES)


def _share(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(f"The share of {key!r} must be a whole number (got {value!r}).", code="question_types")
    try:
        share = int(value)
    except ValueError:
        raise ValidationError(
            f"The share of {key!r} must be a whole number (got {value!r}).", code="question_types"
        ) from None
    if not 0 <= share <= MAX_SHARE:
        raise ValidationError(f"The share of {key!r} must be between 0 and {MAX_SHARE}.", code="question_types")
    return share


def known_type(key: str) -> str:
    """`key` if it is a question type; a ValidationError listing the known ones if not."""
    if key not in QUESTION_TYPES:
        raise ValidationError(f"Unknown question type {key!r}; the known types are {_known()}.", code="question_types")
    return key


def clean_types(shares: Mapping[str, Any] | None) -> dict[str, int]:
    """Valid shares from a mapping of type -> whole number; {} (factual only) for none.

    Types with share 0 are dropped; an unknown type is refused with the list of known ones.
    """
    if not shares:
        return {}
    cleaned: dict[str, int] = {}
    for key, value in shares.items():
        name = known_type(str(key).strip())
        share = _share(name, value)
        if share:
            cleaned[name] = share
    if not cleaned:
        raise ValidationError("Give at least one question type a share above 0.", code="question_types")
    return cleaned


def parse_types(text: str) -> dict[str, int]:
    """Shares from the command line's `factual=2,procedural=1` (a bare name counts 1)."""
    shares: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if name in shares:
            raise ValidationError(f"The question type {name!r} is given twice.", code="question_types")
        shares[name] = value.strip() if sep else 1
    return clean_types(shares)


def format_types(shares: Mapping[str, int]) -> str:
    """`parse_types`' input form of `shares` ("" for factual only)."""
    return ",".join(f"{key}={share}" for key, share in shares.items())


def clean_audience(audience: str) -> str:
    """The persona line: one line, at most AUDIENCE_MAX_CHARS characters."""
    line = " ".join((audience or "").split())
    if len(line) > AUDIENCE_MAX_CHARS:
        raise ValidationError(
            f"The audience must be at most {AUDIENCE_MAX_CHARS} characters (it has {len(line)}).", code="audience"
        )
    return line


def clean_difficulty(difficulty: str) -> str:
    level = (difficulty or "").strip().lower()
    if level not in DIFFICULTIES:
        raise ValidationError(
            f"Unknown difficulty {difficulty!r}; use easy, medium or hard (or leave it empty).", code="difficulty"
        )
    return level


def type_filter(question_type: str) -> list[str]:
    """The stored `Completion.question_type` values of a kind: factual includes "" (completions
    made before types were, all of them, factual)."""
    return [question_type, ""] if question_type == DEFAULT_TYPE else [question_type]


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


def neighbour_units(keys: Sequence[tuple[Any, int]], span: int) -> list[list[int]]:
    """Positions of `keys` ((source, chunk index) in job order) grouped `span` neighbours at a
    time: consecutive indexes of one source, disjoint; a source's last chunks that do not fill
    a group join none."""
    units: list[list[int]] = []
    run: list[int] = []
    for position, (source, index) in enumerate(keys):
        if run and (keys[run[-1]][0] != source or keys[run[-1]][1] + 1 != index):
            run = []
        run.append(position)
        if len(run) == span:
            units.append(run)
            run = []
    return units


def with_fallback(counts: Mapping[str, int], multi_hop_possible: bool) -> dict[str, int]:
    """`counts` with the multi-hop count given to factual when no source has two neighbouring
    chunks: a multi-hop question needs two passages, and a factual one is the nearest kind that
    one passage always supports (the job still makes N, and says the mix in its summary)."""
    if multi_hop_possible or not counts.get(MULTI_HOP):
        return dict(counts)
    moved = {key: n for key, n in counts.items() if key != MULTI_HOP}
    moved[DEFAULT_TYPE] = moved.get(DEFAULT_TYPE, 0) + counts[MULTI_HOP]
    return moved
