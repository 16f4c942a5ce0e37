"""In-process extraction: detect a file's kind, run the extractor of that kind, check the
text against the page/size/token limits.

``extract_file`` runs in the calling process; ``isolation.extract_isolated`` runs it in a child
with CPU and memory limits.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    ACCEPTED,
    EMPTY_MESSAGE,
    HEAD_BYTES,
    LIMITS_MESSAGE,
    NO_TEXT_MESSAGE,
    NO_TEXT_PDF_MESSAGE,
    NOT_TEXT_MESSAGE,
    Extracted,
    ExtractionError,
    PageSink,
    _format_mb,
    _has_utf16_bom,
    _looks_binary,
    _short_reason,
    _too_many_tokens,
)
from .docx import _extract_docx
from .html import _extract_html
from .pdf import _extract_pdf
from .shares import Share, ShareStats, read_share
from .text import _extract_markdown, _extract_text

# A PDF header may sit anywhere in the first KiB.
_PDF_HEADER_WINDOW = 1024

_EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
}


# --------------------------------------------------------------------------- detection


def detect_kind(filename: str, head: bytes) -> str:
    """Classify a file by its first bytes, then by its extension; raise if unsupported."""
    if not head:
        raise ExtractionError(EMPTY_MESSAGE)
    ext = Path(filename).suffix.lower()
    if b"%PDF-" in head[:_PDF_HEADER_WINDOW]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        # The first entries of a Word package are [Content_Types].xml, _rels and word/...
        if b"word/" in head or ext == ".docx":
            return "docx"
        raise ExtractionError(f"{_unsupported(ext)} (It looks like a ZIP archive.)")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise ExtractionError(
            "This is an old Microsoft Office file (.doc); save it as .docx or PDF and upload "
            "it again."
        )
    kind = _EXTENSIONS.get(ext)
    if kind == "pdf":
        raise ExtractionError(
            "The file could not be read as a PDF: it has no PDF header."
        )
    if kind == "docx":
        raise ExtractionError(
            "The file could not be read as a Word document (DOCX): it is not a DOCX package."
        )
    if kind is None:
        raise ExtractionError(_unsupported(ext))
    if not _has_utf16_bom(head) and _looks_binary(head):
        raise ExtractionError(NOT_TEXT_MESSAGE)
    return kind


def _unsupported(ext: str) -> str:
    if not ext:
        return f"Unsupported file type (the file name has no extension). {ACCEPTED}"
    return f"Unsupported file type '{ext}'. {ACCEPTED}"


# --------------------------------------------------------------------------- in-process


def extract_file(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
    on_pages: PageSink | None = None,
) -> Extracted:
    """Extract the text of one uploaded file in this process.

    With ``max_tokens`` the text is also counted (stopping as soon as the limit is passed, so
    a 50 MB blob is refused after a few MB of counting) and ``Extracted.tokens`` is set.

    ``on_pages(total, first, texts)`` hears the pages as they are read (a PDF page by page;
    other kinds, read at once, in one call), so a caller can use the first pages of a long
    PDF while the rest is read. The checks that need every page (no text at all, a scan)
    come at the end: the pages heard are only final once this returns."""
    size = _file_size(path)
    _check_size(size, max_bytes)
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    kind = detect_kind(filename, head)
    counter = _TokenCounter(max_tokens)
    sink = _counting_sink(counter, on_pages)
    try:
        if kind == "pdf":
            result = _extract_pdf(path, filename, max_bytes, max_pages, sink)
        else:
            result = _EXTRACTORS[kind](path, filename, max_bytes, max_pages)
            sink(len(result.pages), 1, result.pages)
    except MemoryError:
        raise ExtractionError(LIMITS_MESSAGE) from None
    if not any(page.strip() for page in result.pages):
        raise ExtractionError(NO_TEXT_PDF_MESSAGE if kind == "pdf" else NO_TEXT_MESSAGE)
    if max_tokens is not None:
        result = Extracted(
            kind=result.kind, pages=result.pages, title=result.title, tokens=counter.total
        )
    return result


# Hears one child's pages of a PDF read by several: like PageSink, plus each page's tokens
# (None when no token limit was asked for).
CountedPageSink = Callable[[int, int, list[str], list[int] | None], None]


def extract_share(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    share: Share,
    max_tokens: int | None = None,
    on_opened: Callable[[int], None],
    on_pages: CountedPageSink,
) -> tuple[str | None, ShareStats]:
    """One child's share of a PDF read by several (see ``shares``): the pages of ``share``,
    each with its token count when ``max_tokens`` is given (the child refuses its share once
    it alone passes the limit; the parent adds the shares up page by page). Returns the
    title (the first child's only) and what the whole-document checks need."""
    _check_size(_file_size(path), max_bytes)
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if detect_kind(filename, head) != "pdf":
        raise ValueError("the file is no longer a PDF")  # the parent saw a PDF header
    counter = _TokenCounter(max_tokens)

    def sink(total: int, first: int, texts: list[str]) -> None:
        counts = []
        for text in texts:
            before = counter.total
            counter.add([text])
            counts.append(counter.total - before)
        on_pages(total, first, texts, None if max_tokens is None else counts)

    try:
        return read_share(path, filename, max_pages, share, sink, on_opened)
    except MemoryError:
        raise ExtractionError(LIMITS_MESSAGE) from None


def _counting_sink(counter: _TokenCounter, on_pages: PageSink | None) -> PageSink:
    """A sink that counts each batch of pages against the token limit before passing it on."""

    def sink(total: int, first: int, texts: list[str]) -> None:
        counter.add(texts)
        if on_pages is not None:
            on_pages(total, first, texts)

    return sink


class _TokenCounter:
    """The running token count of the pages read so far; raises once it passes the limit
    (no limit: counts nothing)."""

    def __init__(self, max_tokens: int | None) -> None:
        self.max_tokens = max_tokens
        self.total = 0

    def add(self, pages: list[str]) -> None:
        if self.max_tokens is not None:
            self.total = _count_tokens_upto(pages, self.max_tokens, start=self.total)


def _tokens_module() -> Any:
    """masscer.lib.tokens; loaded by file path in the isolated child, which loads this
    package by file path without the ``masscer`` package on sys.path (see ``__main__``)."""
    if __name__.startswith("masscer."):
        from masscer.lib import tokens

        return tokens
    import importlib.util

    name = "_masscer_lib_tokens"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parent.with_name("tokens.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _count_tokens_upto(pages: list[str], max_tokens: int, *, start: int = 0) -> int:
    """``start`` plus the tokens of all pages (the same total as ``tokens.count_tokens`` page
    by page); raise as soon as the running total passes ``max_tokens``."""
    tokens = _tokens_module()
    total = start
    for page in pages:
        # The pieces count_tokens itself would encode, so the sum is exact.
        bounds = tokens._piece_bounds(page)
        for start, stop in itertools.pairwise(bounds):
            total += tokens.count_tokens(page[start:stop])
            if total > max_tokens:
                raise _too_many_tokens(max_tokens)
    return total


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise ExtractionError(
            f"The file could not be opened: {_short_reason(exc)}"
        ) from None


def _check_size(size: int, max_bytes: int) -> None:
    if size == 0:
        raise ExtractionError(EMPTY_MESSAGE)
    if size > max_bytes:
        raise ExtractionError(
            f"The file is {_format_mb(size)} MB; the limit is {_format_mb(max_bytes)} MB."
        )


# PDFs are read page by page (``_extract_pdf`` takes a sink); these are read at once.
_EXTRACTORS: dict[str, Callable[[str, str, int, int], Extracted]] = {
    "docx": _extract_docx,
    "markdown": _extract_markdown,
    "text": _extract_text,
    "html": _extract_html,
}
