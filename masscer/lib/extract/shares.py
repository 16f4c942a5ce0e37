"""One PDF read by several isolated children at once (#17): which pages each child reads, what
it reports about them, and how the parent puts the reports back together.

A long PDF is read about K times as fast by K children, each reading an interleaved share:
batches of ``BATCH_PAGES`` pages dealt round-robin (child i reads batches i, i+K, i+2K, ...),
so the pages reach the parent in document order about K times as fast. The checks that need
the whole document (every page failing, a scan, no text at all) cannot run in any one child;
each child reports the figures they need (``ShareStats``) and the parent combines them with
``document_error``, a pure function on those figures: the parent never parses the PDF.

The child's half is ``read_share`` (pypdf through ``pdf``'s helpers); the parent's half is
plain data and pure functions (``document_error``, ``InOrder``). The processes are
``isolation``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .common import NO_TEXT_PDF_MESSAGE, PageSink, _too_many_tokens
from .pdf import _alnum, _open_pdf, _page_count, _page_has_image, _page_text, _pdf_error, _pdf_title, _reading, _scanned

# Pages per batch. Measured on GeoTopo (117 pages, a few pages cost ten times the median): any
# size from 1 to 9 ends within 0.95-1.15 s of CPU for the slower of two children (one child:
# 1.88 s), 8 at 0.97 s; the imbalance is the luck of where the costly pages fall. 8 also sets
# the smallest PDF worth a second process (below): 32 pages, about 0.5 s of reading.
BATCH_PAGES = 8
# A PDF shorter than this many batches per child is read by one child: a second process
# would cost about as much to start (~0.1 s) as it saves.
MIN_BATCHES_PER_CHILD = 2


@dataclass(frozen=True)
class Share:
    """Child ``index`` of ``count`` reading one PDF in batches of ``batch`` pages."""

    index: int
    count: int
    batch: int = BATCH_PAGES

    def pages(self, total: int) -> list[int]:
        """The page numbers (from 1) this child reads, in order: every page for the first
        child when the PDF is too short to split, none for the others."""
        if not splits(total, self.count, self.batch):
            return list(range(1, total + 1)) if self.index == 0 else []
        stride = self.count * self.batch
        return [
            number
            for start in range(self.index * self.batch, total, stride)
            for number in range(start + 1, min(start + self.batch, total) + 1)
        ]


def splits(total: int, count: int, batch: int = BATCH_PAGES) -> bool:
    """True if a PDF of ``total`` pages is worth ``count`` children."""
    return count > 1 and total >= MIN_BATCHES_PER_CHILD * batch * count


@dataclass(frozen=True)
class ShareStats:
    """What the whole-document checks need to know about the pages one child read."""

    pages: int = 0  # pages read
    texts: int = 0  # pages with some text (not only whitespace)
    alnum: int = 0  # letters and digits
    images: int = 0  # pages showing an image
    failure_page: int | None = None  # the first page whose text could not be read...
    failure: str | None = None  # ...and the message that failure gives

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ShareStats:
        """The stats a child wrote; ValueError if they are not what a child writes."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError("malformed share stats")
        counts = [data[name] for name in ("pages", "texts", "alnum", "images")]
        if not all(_is_count(value) for value in counts):
            raise ValueError("malformed share stats")
        page, message = data["failure_page"], data["failure"]
        if (page is None) != (message is None) or not (page is None or _is_count(page)):
            raise ValueError("malformed share stats")
        if message is not None and not isinstance(message, str):
            raise ValueError("malformed share stats")
        return cls(*counts, failure_page=page, failure=message)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Tally:
    """The stats of the pages one child has read so far."""

    def __init__(self) -> None:
        self.pages = self.texts = self.alnum = self.images = 0
        self.failure_page: int | None = None
        self.failure: str | None = None

    def add(self, number: int, text: str, failure: Exception | None, image: bool) -> None:
        self.pages += 1
        self.texts += bool(text.strip())
        self.alnum += _alnum(text)
        self.images += image
        if failure is not None and self.failure is None:
            self.failure_page, self.failure = number, str(_pdf_error(failure))

    def stats(self) -> ShareStats:
        return ShareStats(self.pages, self.texts, self.alnum, self.images, self.failure_page, self.failure)


def read_share(
    path: str, filename: str, max_pages: int, share: Share, sink: PageSink, opened: Callable[[int], None]
) -> tuple[str | None, ShareStats]:
    """The child's half: read this share's pages (``sink`` hears each one) and count what the
    whole-document checks need. ``opened(total)`` hears the page count once the file is open
    and within the limits. Returns the title (the first child's; None for the others) and
    the stats. The limits on the whole file (pages, encryption, damage) are checked here, by
    every child alike."""
    return _reading(lambda: _read_share(path, filename, max_pages, share, sink, opened))


def _read_share(
    path: str, filename: str, max_pages: int, share: Share, sink: PageSink, opened: Callable[[int], None]
) -> tuple[str | None, ShareStats]:
    reader = _open_pdf(path)
    total = _page_count(reader, max_pages)
    opened(total)
    tally = _Tally()
    for number in share.pages(total):
        page = reader.pages[number - 1]
        text, failure = _page_text(page)
        # Every child looks for images: whether the scan rule needs them depends on all pages.
        tally.add(number, text, failure, _page_has_image(page))
        sink(total, number, [text])
    title = _pdf_title(reader, filename) if share.index == 0 else None
    return title, tally.stats()


def document_error(stats: list[ShareStats], total: int) -> str | None:
    """The message of the whole-document check a PDF of ``total`` pages fails, given what its
    children read; None if it passes. The same checks, in the same order, as one reader of
    every page (``pdf._read_pdf``, then ``core.extract_file``)."""
    texts = sum(share.texts for share in stats)
    failures = sorted((s.failure_page, s.failure) for s in stats if s.failure is not None)
    if failures and texts == 0:
        return failures[0][1]  # the first failing page's error, as one reader reports it
    alnum = sum(share.alnum for share in stats)
    if _scanned(alnum, total, lambda: sum(share.images for share in stats)):
        return NO_TEXT_PDF_MESSAGE
    if texts == 0:
        return NO_TEXT_PDF_MESSAGE
    return None


class BadReport(ValueError):
    """A child reported pages that do not fit the others (a bug, never the user's file)."""


class InOrder:
    """Pages reported by several children, out of order, handed on to ``on_pages`` contiguous
    and in document order, each page once (the caller stores them in order and chunks the
    stable prefix).

    With ``max_tokens``, each page comes with its token count and the running total is checked
    page by page, in document order, as one child reading every page does: the page that
    passes the limit is not handed on, and the limit's message is raised."""

    def __init__(self, on_pages: PageSink | None, max_tokens: int | None = None) -> None:
        self.on_pages = on_pages
        self.max_tokens = max_tokens
        self.total: int | None = None
        self.pages: list[str] = []  # handed on: pages 1..len(pages)
        self.tokens = 0  # of the pages handed on
        self._waiting: dict[int, tuple[str, int]] = {}

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self.pages) == self.total

    def add(self, total: int, first: int, texts: list[str], tokens: list[int] | None = None) -> None:
        """Pages ``first``, ``first + 1``, ... of ``total``; BadReport if a child reports
        pages that do not fit (another total, out of range, twice, no token counts)."""
        self._check(total, first, texts, tokens)
        for offset, text in enumerate(texts):
            self._waiting[first + offset] = (text, tokens[offset] if tokens is not None else 0)
        self._release()

    def _check(self, total: int, first: int, texts: list[str], tokens: list[int] | None) -> None:
        if self.total is None:
            self.total = total
        if total != self.total or first < 1 or first + len(texts) - 1 > total:
            raise BadReport(f"pages {first}+{len(texts)} of {total} do not fit {self.total} pages")
        numbers = range(first, first + len(texts))
        if first <= len(self.pages) or any(number in self._waiting for number in numbers):
            raise BadReport(f"pages from {first} reported twice")
        if self.max_tokens is not None and (tokens is None or len(tokens) != len(texts)):
            raise BadReport("pages reported without their token counts")

    def _release(self) -> None:
        assert self.total is not None
        run: list[str] = []
        try:
            while len(self.pages) + len(run) + 1 in self._waiting:
                text, count = self._waiting.pop(len(self.pages) + len(run) + 1)
                self._count(count)
                run.append(text)
        finally:
            # The pages before a page over the token limit are handed on, as one child does.
            self._hand_on(run)

    def _count(self, tokens: int) -> None:
        if self.max_tokens is None:
            return
        if self.tokens + tokens > self.max_tokens:
            raise _too_many_tokens(self.max_tokens)
        self.tokens += tokens

    def _hand_on(self, run: list[str]) -> None:
        if not run:
            return
        first = len(self.pages) + 1
        self.pages.extend(run)
        if self.on_pages is not None:
            assert self.total is not None
            self.on_pages(self.total, first, run)
