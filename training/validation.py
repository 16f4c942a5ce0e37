"""Model output is data: every pair is checked before it is stored (pure functions)."""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
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
    "budget_exhausted": "the job reached its cost budget",
}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip()


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
    candidates: Iterable[Candidate], *, source: str, index: QuestionIndex, wanted: int
) -> tuple[list[Candidate], Counter[str]]:
    """Accept at most `wanted` valid, new pairs; count why the others were rejected.

    Accepted questions are added to `index`, so duplicates inside one reply are caught.
    """
    accepted: list[Candidate] = []
    reasons: Counter[str] = Counter()
    for candidate in candidates:
        cleaned = Candidate(candidate.question.strip(), candidate.answer.strip(), candidate.evidence.strip())
        if not (cleaned.question and cleaned.answer and cleaned.evidence):
            reasons["empty_field"] += 1
        elif not evidence_in_source(cleaned.evidence, source):
            reasons["evidence_not_found"] += 1
        elif index.is_duplicate(cleaned.question):
            reasons["duplicate"] += 1
        elif len(accepted) >= wanted:
            reasons["extra_dropped"] += 1
        else:
            accepted.append(cleaned)
            index.add(cleaned.question)
    return accepted, reasons


def describe_reasons(reasons: dict[str, int]) -> str:
    parts = [f"{REASON_LABELS.get(key, key)} ({n}×)" for key, n in sorted(reasons.items()) if n]
    return "; ".join(parts)
