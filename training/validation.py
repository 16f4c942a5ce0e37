"""Model output is data: every pair is checked before it is stored (pure functions)."""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")
# Quote marks models like to wrap evidence in; they are not part of the source.
_QUOTES = "\"'“”‘’«»„`"

REASON_LABELS = {
    "empty_field": "a question, answer or evidence was empty",
    "evidence_not_found": "the evidence quote was not found in the source",
    "duplicate": "the question duplicated or nearly duplicated an earlier one",
    "invalid_output": "the model's output could not be parsed",
    "truncated": "the model's output was cut off at the token limit",
    "extra_dropped": "the model returned more pairs than asked (extras dropped)",
    "spare_unused": "a spare pair asked for near the end of the job was not needed",
    "calls_exhausted": "the model did not deliver enough valid pairs within the allowed calls",
    "model_error": "the model endpoint returned an error",
    "cancelled": "the job was cancelled",
    "source_exhausted": "the conversations hold fewer user questions than asked",
    "model_returned_fewer": "the model returned fewer pairs than asked",
    "budget_exhausted": "the job reached its cost budget",
    "quota_moved": "pairs a chunk could not make were asked of other chunks with unused text",
    "chunks_exhausted": "every chunk was exhausted: none had unused text left for the missing pairs",
    "judge_low": "the judge scored the pair's faithfulness below the job's threshold",
    "judge_unchecked": "the budget ran out before the judge could score the pairs (not stored)",
}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip()


# Joins a question key and the id of a row that already repeated it before keys were unique
# (migration 0008): such a row keeps its place without clashing with the first one.
KEY_SUFFIX = "~"


def question_key(question: str) -> str:
    """What makes two questions of a job the same: their normal form (case, Unicode compatibility
    forms and whitespace ignored, as the exact-duplicate check compares them), hashed so the
    unique index on it stays small whatever a question's length."""
    return hashlib.sha256(normalise(question).encode("utf-8")).hexdigest()


def same_question(key: str, stored_key: str) -> bool:
    """Whether `stored_key` (a completion's key) stands for the question whose key is `key`."""
    return stored_key == key or stored_key.startswith(key + KEY_SUFFIX)


def _evidence_form(text: str) -> str:
    # Whitespace- and case-insensitive; hyphenation and quote styles vary between
    # the PDF text layer and what a model copies, so those are ignored too.
    text = normalise(text).strip(_QUOTES + " .…")
    text = text.replace("…", "").replace("...", "")
    return _SPACE.sub("", text)


@lru_cache(maxsize=64)
def _source_form(source: str) -> str:
    # A reply's pairs are all checked against the same chunk: normalise it once.
    return _evidence_form(source)


def evidence_in_source(evidence: str, source: str) -> bool:
    needle = _evidence_form(evidence)
    return bool(needle) and needle in _source_form(source)


def question_words(question: str) -> frozenset[str]:
    return frozenset(_WORD.findall(normalise(question)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _rarity(word: str) -> tuple[int, str]:
    # Longer words first: a fixed stand-in for "rarer first" (stop words are short), which
    # keeps the posting lists of the prefix index short.
    return (-len(word), word)


@dataclass
class QuestionIndex:
    """The questions of one job, for exact and near-duplicate checks.

    Near duplicates are found with prefix filtering (as in all-pairs similarity search):
    each word set is listed under the first few of its words in one fixed order, and a
    question is compared only with the sets that share one of its own first words. Two
    sets whose Jaccard similarity reaches the threshold t always share such a word (their
    first common word in that order), so nothing is missed; with t = 0.8 a set of 8 words
    is listed under 2 of them, and a check costs a few comparisons instead of one per
    question of the job.
    """

    threshold: float
    exact: set[str] = field(default_factory=set)
    word_sets: list[frozenset[str]] = field(default_factory=list)
    postings: dict[str, list[int]] = field(default_factory=dict)
    has_empty: bool = False

    def _prefix(self, words: frozenset[str]) -> list[str]:
        # Any set B with jaccard(A, B) >= t overlaps A in at least ceil(t * |A|) words.
        overlap = max(1, math.ceil(self.threshold * len(words) - 1e-9))
        return sorted(words, key=_rarity)[: len(words) - overlap + 1]

    def add(self, question: str) -> None:
        self.exact.add(normalise(question))
        words = question_words(question)
        position = len(self.word_sets)
        self.word_sets.append(words)
        if not words:
            self.has_empty = True
        for word in self._prefix(words):
            self.postings.setdefault(word, []).append(position)

    def extend(self, questions: Iterable[str]) -> None:
        for question in questions:
            self.add(question)

    def is_duplicate(self, question: str) -> bool:
        if normalise(question) in self.exact:
            return True
        words = question_words(question)
        if self.threshold <= 0:
            return bool(self.word_sets)
        if not words:
            return self.has_empty  # jaccard of two empty sets is 1
        seen: set[int] = set()
        for word in self._prefix(words):
            for position in self.postings.get(word, ()):
                if position not in seen:
                    seen.add(position)
                    if jaccard(words, self.word_sets[position]) >= self.threshold:
                        return True
        return False


@dataclass(frozen=True)
class Candidate:
    question: str
    answer: str
    evidence: str


def screen(
    candidates: Iterable[Candidate],
    *,
    source: str,
    index: QuestionIndex,
    wanted: int,
    rejected: list[tuple[str, Candidate]] | None = None,
    extras: list[Candidate] | None = None,
) -> tuple[list[Candidate], Counter[str]]:
    """Accept at most `wanted` valid, new pairs; count why the others were rejected.

    Accepted questions are added to `index`, so duplicates inside one reply are caught.
    With `rejected`, each rejected pair is appended to it with its reason (valid extras
    beyond `wanted` are dropped, not rejected, and are not listed; with `extras` they are
    kept there, cleaned, not added to `index`).
    """
    accepted: list[Candidate] = []
    reasons: Counter[str] = Counter()
    for candidate in candidates:
        cleaned = Candidate(candidate.question.strip(), candidate.answer.strip(), candidate.evidence.strip())
        if not (cleaned.question and cleaned.answer and cleaned.evidence):
            reason = "empty_field"
        elif not evidence_in_source(cleaned.evidence, source):
            reason = "evidence_not_found"
        elif index.is_duplicate(cleaned.question):
            reason = "duplicate"
        elif len(accepted) >= wanted:
            reasons["extra_dropped"] += 1
            if extras is not None:
                extras.append(cleaned)
            continue
        else:
            accepted.append(cleaned)
            index.add(cleaned.question)
            continue
        reasons[reason] += 1
        if rejected is not None:
            rejected.append((reason, cleaned))
    return accepted, reasons


def describe_reasons(reasons: dict[str, int]) -> str:
    parts = [f"{REASON_LABELS.get(key, key)} ({n}×)" for key, n in sorted(reasons.items()) if n]
    return "; ".join(parts)


# --- samples of rejected replies, and what to do about a shortfall ---------------------------

# Rejected replies kept per work item, and shown per job; each shortened to about this many characters.
SAMPLES_PER_ITEM = 3
SAMPLE_CHARS = 300


def shorten(text: str, limit: int = SAMPLE_CHARS, *, keep_end: bool = False) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis (at the start with `keep_end`)."""
    flat = _SPACE.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    return "…" + flat[-(limit - 1) :] if keep_end else flat[: limit - 1] + "…"


def pair_text(pair: Candidate) -> str:
    """A rejected pair as the job page shows it."""
    return shorten(f"Q: {pair.question} A: {pair.answer} E: {pair.evidence}")


def add_samples(
    kept: Sequence[Mapping[str, str]], found: Iterable[tuple[str, str]], limit: int = SAMPLES_PER_ITEM
) -> list[dict[str, str]] | None:
    """`kept` with (reason, text) samples from `found` added up to `limit`, reasons not yet kept
    first and no sample twice; None when nothing was added (so the caller writes nothing)."""
    room = limit - len(kept)
    candidates = list(found)
    if room <= 0 or not candidates:
        return None
    have = {sample.get("reason") for sample in kept}
    seen = {(sample.get("reason"), sample.get("text")) for sample in kept}
    fresh: list[tuple[str, str]] = []
    again: list[tuple[str, str]] = []
    for reason, text in candidates:
        if (reason, text) in seen:
            continue  # a model that keeps sending the same reply shows it once
        seen.add((reason, text))
        (again if reason in have else fresh).append((reason, text))
        have.add(reason)
    chosen = (fresh + again)[:room]
    if not chosen:
        return None
    return [dict(sample) for sample in kept] + [{"reason": reason, "text": text} for reason, text in chosen]


def pick_samples(
    per_item: Iterable[Sequence[Mapping[str, str]]], limit: int = SAMPLES_PER_ITEM
) -> list[dict[str, str]]:
    """Up to `limit` samples from several items' lists, one of each reason first."""
    found = [
        (str(sample.get("reason", "")), str(sample.get("text", "")))
        for samples in per_item
        for sample in samples
        if isinstance(sample, Mapping)
    ]
    return add_samples([], found, limit) or []


# Reasons that are the model's doing (a stronger model makes them rarer), most telling first;
# `calls_exhausted` only says the model kept falling short, so it comes last.
MODEL_REASONS = (
    "evidence_not_found",
    "invalid_output",
    "truncated",
    "empty_field",
    "model_returned_fewer",
    "calls_exhausted",
)
# Reasons that stop a job whatever the model does; their own message says what to do.
_STOPPED_BY = ("budget_exhausted", "cancelled", "model_error")
_STRONGER = (
    "point MASSCER_LLM_BASE_URL and MASSCER_LLM_MODEL at a stronger model "
    "(see the README: “Point it at another model”), then retry"
)
_WHAT_WENT_WRONG = {
    "evidence_not_found": (
        "The model returned no pair whose evidence is in the text",
        "Most of the model's evidence quotes were not found in the text",
    ),
    "invalid_output": ("The model's replies could not be parsed", "Many of the model's replies could not be parsed"),
    "truncated": (
        "The model's replies were cut off at the token limit",
        "Some of the model's replies were cut off at the token limit",
    ),
    "empty_field": (
        "The model left questions, answers or evidence empty",
        "The model often left a question, answer or evidence empty",
    ),
    "model_returned_fewer": (
        "The model returned fewer pairs than asked, and none that could be used",
        "The model returned fewer pairs than asked",
    ),
    "calls_exhausted": (
        "The model did not deliver a valid pair within the allowed calls",
        "The model did not deliver enough valid pairs within the allowed calls",
    ),
}


def next_step(reasons: Mapping[str, object], *, created: int, requested: int) -> str | None:
    """What to do about a job that made fewer than `requested` because of the model, or None.

    `reasons` are the job's shortfall reasons (counts by key). None when nothing is missing,
    when the job was stopped (budget, cancel, endpoint errors: their message says what to do),
    or when no reason is the model's (e.g. the conversations hold fewer questions than asked).
    """
    counts = {key: n for key, n in reasons.items() if isinstance(n, int) and n > 0}
    if created >= requested or any(key in counts for key in _STOPPED_BY):
        return None
    # The most frequent of the model's reasons; calls_exhausted only when it is the only one.
    found = [key for key in MODEL_REASONS[:-1] if key in counts] or [k for k in MODEL_REASONS[-1:] if k in counts]
    if not found:
        return None
    main = max(found, key=lambda key: (counts[key], -MODEL_REASONS.index(key)))
    what = _WHAT_WENT_WRONG[main][0 if created == 0 else 1]
    fix = "raise the job's max tokens or " + _STRONGER if main == "truncated" else _STRONGER
    return f"{what} — {fix}."
