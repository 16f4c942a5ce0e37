"""PDF extraction with pypdf: one text per page, with clear messages for encrypted, damaged,
hostile and scanned (no text layer) files. pypdf is imported only when a PDF is read."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from .common import (
    LIMITS_MESSAGE,
    NO_TEXT_PDF_MESSAGE,
    PASSWORD_MESSAGE,
    Extracted,
    ExtractionError,
    PageSink,
    _clean_title,
    _sentence,
    _short_reason,
    _stem,
    clean_text,
)

NESTED_PDF_MESSAGE = (
    "The file could not be read as a PDF: its objects are nested too deeply "
    "(the file is damaged or built to crash PDF readers)."
)

# Scanned PDFs sometimes carry a few stray words (ImageMagick writes an invisible
# "Background" label under each image). Below this many letters/digits per page, on pages
# that are mostly images, there is nothing worth indexing.
_SCAN_MIN_ALNUM_PER_PAGE = 10

_ALNUM = re.compile(r"[^\W_]")

_T = TypeVar("_T")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from or during (pypdf wraps MemoryError and
    RecursionError in PdfReadError("Error reading PDF file."))."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _pdf_error(exc: BaseException) -> ExtractionError:
    chain = _causes(exc)
    if any(isinstance(cause, MemoryError) for cause in chain):
        return ExtractionError(LIMITS_MESSAGE)
    if any(isinstance(cause, RecursionError) for cause in chain):
        return ExtractionError(NESTED_PDF_MESSAGE)
    from pypdf.errors import LimitReachedError

    if isinstance(exc, LimitReachedError):
        # pypdf's own bounds: decompression bombs, oversized arrays, page-tree cycles...
        return ExtractionError(
            "The file could not be read as a PDF: it exceeds a safety limit "
            f"({_short_reason(exc).rstrip('.')})."
        )
    return ExtractionError(
        _sentence(f"The file could not be read as a PDF: {_short_reason(exc)}")
    )


def _extract_pdf(
    path: str, filename: str, max_bytes: int, max_pages: int, sink: PageSink | None = None
) -> Extracted:
    """The PDF's text, page by page; ``sink`` hears each page as soon as it is read."""
    return _reading(lambda: _read_pdf(path, filename, max_pages, sink))


def _reading(read: Callable[[], _T]) -> _T:
    """``read()``, with whatever pypdf raises turned into the message a PDF reader shows."""
    try:
        return read()
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on damaged files
        raise _pdf_error(exc) from None


def _read_pdf(path: str, filename: str, max_pages: int, sink: PageSink | None) -> Extracted:
    reader = _open_pdf(path)
    _page_count(reader, max_pages)
    pages, failures = _pdf_page_texts(reader, sink)
    if failures and not any(page.strip() for page in pages):
        raise _pdf_error(failures[0])
    if _looks_scanned(reader, pages):
        raise ExtractionError(NO_TEXT_PDF_MESSAGE)
    return Extracted(kind="pdf", pages=pages, title=_pdf_title(reader, filename))


def _page_count(reader: Any, max_pages: int) -> int:
    """The number of pages, refused when over the limit or zero."""
    count = len(reader.pages)
    if count > max_pages:
        raise ExtractionError(
            f"The PDF has {count:,} pages; the limit is {max_pages:,}."
        )
    if count == 0:
        raise ExtractionError("The file could not be read as a PDF: it has no pages.")
    return count


def _open_pdf(path: str) -> Any:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError

    reader = PdfReader(path, strict=False)
    if not reader.is_encrypted:
        return reader
    try:
        # Many "protected" PDFs only restrict printing/copying and open with an empty password.
        result = reader.decrypt("")
    except DependencyError:
        raise ExtractionError(
            "This PDF is encrypted with a method that cannot be read here; save an "
            "unprotected copy and upload it again."
        ) from None
    if result == PasswordType.NOT_DECRYPTED:
        raise ExtractionError(PASSWORD_MESSAGE)
    return reader


def _pdf_page_texts(reader: Any, sink: PageSink | None = None) -> tuple[list[str], list[Exception]]:
    """Text of every page; a page that fails yields "" so one bad page does not sink the rest."""
    pages: list[str] = []
    failures: list[Exception] = []
    total = len(reader.pages)
    for page in reader.pages:
        text, failure = _page_text(page)
        if failure is not None:
            failures.append(failure)
        pages.append(text)
        if sink is not None:
            sink(total, len(pages), pages[-1:])
    return pages, failures


def _page_text(page: Any) -> tuple[str, Exception | None]:
    """The page's clean text, or "" and why it could not be read (MemoryError is raised)."""
    try:
        text = page.extract_text()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad page must not sink the others
        return "", exc
    return clean_text(text or ""), None


def _pdf_title(reader: Any, filename: str) -> str:
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception:  # noqa: BLE001 - a broken info dictionary only costs the title
        title = None
    return _clean_title(title, _stem(filename))


def _looks_scanned(reader: Any, pages: list[str]) -> bool:
    """True when the 'text' is only stray labels on image pages, i.e. there is no text layer."""
    enough = _SCAN_MIN_ALNUM_PER_PAGE * len(pages)
    alnum = 0
    for page in pages:
        alnum += _alnum(page)
        if alnum >= enough:
            break
    return _scanned(alnum, len(pages), lambda: sum(1 for page in reader.pages if _page_has_image(page)))


def _scanned(alnum: int, total: int, images: Callable[[], int]) -> bool:
    """The scan rule on figures alone: ``alnum`` letters and digits over ``total`` pages, of
    which ``images()`` show an image (asked only when needed). ``shares`` applies it to what
    several children counted."""
    if alnum >= _SCAN_MIN_ALNUM_PER_PAGE * total:
        return False
    if alnum == 0:
        return True
    return images() * 2 >= total


def _alnum(text: str) -> int:
    return len(_ALNUM.findall(text))


def _page_has_image(page: Any) -> bool:
    try:
        xobjects = page["/Resources"]["/XObject"]
        return any(
            xobject.get_object().get("/Subtype") == "/Image"
            for xobject in xobjects.values()
        )
    except Exception:  # noqa: BLE001 - missing or broken resources: no image
        return False
