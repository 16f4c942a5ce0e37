"""Pair generation: N grounded, mutually distinct question/answer/evidence pairs from a source."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_STOPWORD_TEXT = """
a an and are as at be been but by can could did do does for from had has have he
her his how i if in into is it its me my no not of on or our she so than that
the their them then there these they this to was we were what when where which
who why will with would you your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TEMPLATES = (
    "What does the text say about «{w}»?",
    "Which detail is given regarding «{w}»?",
    "How is «{w}» described in the passage?",
    "What is stated concerning «{w}»?",
    "According to the source, what is meant by «{w}»?",
    "Why does the material mention «{w}»?",
    "What can be learned from «{w}»?",
    "Which fact relates to «{w}»?",
    "In what context does «{w}» appear?",
    "What information accompanies «{w}»?",
)
# Other kinds of question (``masscer.lib.llm.prompts.QUESTION_TYPE_RULES``): what a model
# following the type rule would ask. Factual uses ``_TEMPLATES``.
_TYPED_TEMPLATES: dict[str, tuple[str, ...]] = {
    # Short on purpose (at most 7 words besides the window), like ``_TEMPLATES``: two
    # questions of one template must stay below ``_MAX_SIMILARITY``.
    "procedural": (
        "How does one go about «{w}»?",
        "What are the steps for «{w}»?",
        "How is «{w}» carried out?",
    ),
    "explanatory": (
        "Why does the text bring up «{w}»?",
        "What is the reason for «{w}»?",
        "Why does «{w}» matter here?",
    ),
    "comparison": (
        "How does «{w}» compare with the rest?",
        "What sets «{w}» apart from the rest?",
        "How does «{w}» differ from its context?",
    ),
    "multi_hop": (
        "How does «{w}» connect to the other section?",
        "Across both passages, what follows from «{w}»?",
        "What links «{w}» with the other passage?",
    ),
    "unanswerable": (
        "What does «{w}» cost, per the text?",
        "Who first proposed «{w}»?",
        "On what date was «{w}» introduced?",
    ),
}
# An unanswerable pair's answer: the source does not say, and what it does say.
_UNANSWERED_PREFIX = "The text does not say. What it does say is: "
_MAX_WINDOW_WORDS = 6
_WINDOW_CONTENT_WORDS = 2
_MAX_EVIDENCE_WORDS = 24
_MAX_ANSWER_WORDS = 12
# Stricter than the caller's 0.8 so generated questions never look alike.
_MAX_SIMILARITY = 0.7
_MAX_CONTENT_SIMILARITY = 0.5


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int
    sentence: int


def _words(source: str) -> list[_Word]:
    words: list[_Word] = []
    sentence = 0
    previous_end = 0
    for match in _WORD.finditer(source):
        # A line break also ends a "sentence" so evidence never spans lines
        # (completion-mode E: lines are single lines).  splitlines() knows
        # every break character the parser in llm.py will split on.
        gap = source[previous_end : match.start()]
        if words and len(f"x{gap}x".splitlines()) > 1:
            sentence += 1
        words.append(_Word(match.group(), match.start(), match.end(), sentence))
        if _SENTENCE_END.search(match.group()):
            sentence += 1
        previous_end = match.end()
    return words


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in _TOKEN.findall(text)}


def _content(tokens: set[str]) -> set[str]:
    return {t for t in tokens if t not in _STOPWORDS and (len(t) >= 3 or t.isdigit())}


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _windows(words: Sequence[_Word]) -> list[tuple[int, int]]:
    """Candidate (start, end) word windows: non-overlapping passes at offsets."""
    found: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for offset in (0, 2, 1, 3):
        i = offset
        while i < len(words):
            j = i
            content = 0
            while (
                j < len(words)
                and j - i < _MAX_WINDOW_WORDS
                and words[j].sentence == words[i].sentence
            ):
                content += bool(_content(_tokens(words[j].text)))
                j += 1
                if content >= _WINDOW_CONTENT_WORDS:
                    break
            if content and (i, j) not in seen:
                seen.add((i, j))
                found.append((i, j))
            i = max(j, i + 1)
    return found


def _span(source: str, words: Sequence[_Word], first: int, last: int) -> str:
    return source[words[first].start : words[last].end]


def _evidence(source: str, words: Sequence[_Word], start: int, end: int) -> str:
    sentence = words[start].sentence
    lo = start
    while lo > 0 and words[lo - 1].sentence == sentence and start - lo < 6:
        lo -= 1
    hi = end - 1
    while (
        hi + 1 < len(words)
        and words[hi + 1].sentence == sentence
        and hi - lo < _MAX_EVIDENCE_WORDS - 1
    ):
        hi += 1
    return _span(source, words, lo, hi)


def _answer(source: str, words: Sequence[_Word], start: int, prefix: str = "The text says: ") -> str:
    sentence = words[start].sentence
    hi = start
    while (
        hi + 1 < len(words)
        and words[hi + 1].sentence == sentence
        and hi - start < _MAX_ANSWER_WORDS - 1
    ):
        hi += 1
    return prefix + " ".join(w.text for w in words[start : hi + 1])


_WINDOW_QUOTE = re.compile(r"«(.*?)»")


def _window_tokens(question: str) -> set[str]:
    """Content tokens of the quoted window (whole question when unquoted)."""
    quoted = _WINDOW_QUOTE.findall(question)
    return _content(_tokens(" ".join(quoted) if quoted else question))


@dataclass(frozen=True)
class _Taken:
    tokens: set[str]
    window: set[str]

    @classmethod
    def of(cls, question: str) -> _Taken:
        return cls(tokens=_tokens(question), window=_window_tokens(question))


def _distinct(question: str, taken: Sequence[_Taken]) -> bool:
    # Compare whole questions (what the caller's near-duplicate filter sees)
    # and the quoted windows, so a window is never reused with a new template.
    candidate = _Taken.of(question)
    return all(
        _jaccard(candidate.tokens, t.tokens) < _MAX_SIMILARITY
        and _jaccard(candidate.window, t.window) < _MAX_CONTENT_SIMILARITY
        for t in taken
    )


def make_pairs(
    source: str, count: int, existing: Sequence[str] = (), *, question_type: str = "factual"
) -> list[dict[str, str]]:
    """``count`` pairs grounded in ``source``: verbatim evidence, distinct questions.

    Questions avoid anything similar to ``existing`` and are of ``question_type``'s kind
    (an unanswerable pair's answer says the text does not say; its evidence is still a
    verbatim quote).  When the source is too small for enough distinct questions, the
    rest are numbered variants (which a near-duplicate filter may legitimately reject).
    """
    templates = _TYPED_TEMPLATES.get(question_type, _TEMPLATES)
    prefix = _UNANSWERED_PREFIX if question_type == "unanswerable" else "The text says: "
    words = _words(source)
    if not words:
        return [
            {
                "question": f"What is question {k + 1} about?",
                "answer": "Nothing.",
                "evidence": "",
            }
            for k in range(count)
        ]
    taken = [_Taken.of(q) for q in existing]
    pairs: list[dict[str, str]] = []
    windows = _windows(words)
    for start, end in windows:
        if len(pairs) >= count:
            break
        window = " ".join(w.text for w in words[start:end])
        question = templates[len(pairs) % len(templates)].format(w=window)
        if not _distinct(question, taken):
            continue
        taken.append(_Taken.of(question))
        pairs.append(_pair(source, words, start, end, question, prefix))
    extra = 0
    while len(pairs) < count:
        start, end = windows[extra % len(windows)] if windows else (0, 1)
        window = " ".join(w.text for w in words[start:end])
        question = f"Question {len(pairs) + 1}: what else is said about «{window}»?"
        pairs.append(_pair(source, words, start, end, question, prefix))
        extra += 1
    return pairs


def _pair(
    source: str, words: Sequence[_Word], start: int, end: int, question: str, prefix: str
) -> dict[str, str]:
    return {
        "question": question,
        "answer": _answer(source, words, start, prefix),
        "evidence": _evidence(source, words, start, end),
    }
