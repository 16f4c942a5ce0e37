"""Text extraction from uploaded documents (PDF, DOCX, Markdown, plain text, HTML).

Two entry points:

* ``extract_file`` runs in-process; fine for trusted input and tests.
* ``extract_isolated`` runs the same code in a child interpreter with CPU and memory limits, so
  a hostile or pathological file cannot take a Celery worker down. Celery prefork workers are
  daemonic and may not use ``multiprocessing``, hence a plain ``subprocess``.

Every failure the user can cause surfaces as ``ExtractionError`` whose ``str()`` is a message
meant for the end user, never a traceback.

This module must stay importable without Django and cheap to import: the child process imports
it (by file path, see ``_child_command``) and then only pypdf or python-docx as needed (and
``tokens.py``, by file path too, when a token limit is passed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("pdf", "docx", "markdown", "text", "html")
ACCEPTED = "Accepted: PDF, DOCX, Markdown, plain text, HTML."
LIMITS_MESSAGE = "The file could not be processed within the time/memory limits."
PASSWORD_MESSAGE = (
    "This PDF is password protected; remove the password and upload it again."
)
NO_TEXT_PDF_MESSAGE = (
    "No extractable text: the PDF has no text layer (is it a scan?). "
    "Run it through OCR (text recognition) and upload the result."
)
NO_TEXT_MESSAGE = "No extractable text: the file contains no text."
EMPTY_MESSAGE = "The file is empty."
NOT_TEXT_MESSAGE = "The file does not look like text (it contains binary data)."

# How many leading bytes detect_kind looks at; a PDF header may sit anywhere in the first KiB.
HEAD_BYTES = 8192
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

# A DOCX may legitimately hold large images, but XML that unpacks to many times the upload
# limit is a zip bomb; python-docx would load it all into memory.
_DOCX_EXPANSION_FACTOR = 20
_ZIP_READ_BYTES = 1024 * 1024

# Scanned PDFs sometimes carry a few stray words (ImageMagick writes an invisible
# "Background" label under each image). Below this many letters/digits per page, on pages
# that are mostly images, there is nothing worth indexing.
_SCAN_MIN_ALNUM_PER_PAGE = 10

_SURROGATES = re.compile("[\ud800-\udfff]")
_ALNUM = re.compile(r"[^\W_]")


class ExtractionError(Exception):
    """A document could not be turned into text; ``str()`` is shown to the end user."""


@dataclass(frozen=True)
class Extracted:
    kind: str  # one of KINDS
    # One entry per PDF page (page n is pages[n - 1]); a single entry for other kinds.
    pages: list[str]
    title: str
    # Token count of all pages, when the caller asked for a token limit (else None).
    tokens: int | None = None


# --------------------------------------------------------------------------- helpers


def _format_mb(size: int) -> str:
    value = size / (1024 * 1024)
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _short_reason(exc: BaseException) -> str:
    """One clean line describing an exception, for messages shown to users."""
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _sentence(text: str) -> str:
    """``text`` ending like a sentence (library messages often lack the final period)."""
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def clean_text(text: str) -> str:
    """Normalise newlines, drop NULs (PostgreSQL rejects them) and lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if _SURROGATES.search(text):
        # Broken ToUnicode maps can yield lone surrogates, which cannot be encoded as UTF-8.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _clean_title(title: object, fallback: str) -> str:
    if not isinstance(title, str):
        return fallback
    text = " ".join(clean_text(title).split())
    return text[:300] if text else fallback


def _stem(filename: str) -> str:
    stem = Path(filename).stem.strip()
    return stem or "Untitled"


def _looks_binary(head: bytes) -> bool:
    """True if the bytes are unlikely to be text in UTF-8 or any 8-bit encoding: too many
    control characters (a stray NUL in a text file is tolerated and stripped later)."""
    sample = head[:HEAD_BYTES]
    if not sample:
        return False
    allowed = {0x09, 0x0A, 0x0C, 0x0D, 0x1B}
    controls = sum(
        1 for byte in sample if (byte < 0x20 and byte not in allowed) or byte == 0x7F
    )
    return controls / len(sample) > 0.05


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


def _has_utf16_bom(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))


# --------------------------------------------------------------------------- in-process


def extract_file(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
) -> Extracted:
    """Extract the text of one uploaded file in this process.

    With ``max_tokens`` the text is also counted (stopping as soon as the limit is passed, so
    a 50 MB blob is refused after a few MB of counting) and ``Extracted.tokens`` is set."""
    size = _file_size(path)
    _check_size(size, max_bytes)
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    kind = detect_kind(filename, head)
    extractor = _EXTRACTORS[kind]
    try:
        result = extractor(path, filename, max_bytes, max_pages)
    except MemoryError:
        raise ExtractionError(LIMITS_MESSAGE) from None
    if not any(page.strip() for page in result.pages):
        raise ExtractionError(NO_TEXT_PDF_MESSAGE if kind == "pdf" else NO_TEXT_MESSAGE)
    if max_tokens is not None:
        tokens = _count_tokens_upto(result.pages, max_tokens)
        result = Extracted(
            kind=result.kind, pages=result.pages, title=result.title, tokens=tokens
        )
    return result


def _tokens_module() -> Any:
    """masscer.lib.tokens; loaded by file path in the isolated child, which runs this file
    as a script without the ``masscer`` package on sys.path."""
    if __package__:
        from masscer.lib import tokens

        return tokens
    import importlib.util

    name = "_masscer_lib_tokens"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).with_name("tokens.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _count_tokens_upto(pages: list[str], max_tokens: int) -> int:
    """Tokens of all pages (the same total as ``tokens.count_tokens`` page by page); raise as
    soon as the running total passes ``max_tokens``."""
    tokens = _tokens_module()
    total = 0
    for page in pages:
        # The pieces count_tokens itself would encode, so the sum is exact.
        bounds = tokens._piece_bounds(page)
        for start, stop in itertools.pairwise(bounds):
            total += tokens.count_tokens(page[start:stop])
            if total > max_tokens:
                raise ExtractionError(
                    f"The document has more than {max_tokens:,} tokens of text; "
                    f"the limit is {max_tokens:,}."
                )
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


# --------------------------------------------------------------------------- PDF


NESTED_PDF_MESSAGE = (
    "The file could not be read as a PDF: its objects are nested too deeply "
    "(the file is damaged or built to crash PDF readers)."
)


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


def _extract_pdf(path: str, filename: str, max_bytes: int, max_pages: int) -> Extracted:
    try:
        return _read_pdf(path, filename, max_pages)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on damaged files
        raise _pdf_error(exc) from None


def _read_pdf(path: str, filename: str, max_pages: int) -> Extracted:
    reader = _open_pdf(path)
    count = len(reader.pages)
    if count > max_pages:
        raise ExtractionError(
            f"The PDF has {count:,} pages; the limit is {max_pages:,}."
        )
    if count == 0:
        raise ExtractionError("The file could not be read as a PDF: it has no pages.")
    pages, failures = _pdf_page_texts(reader)
    if failures and not any(page.strip() for page in pages):
        raise _pdf_error(failures[0])
    if _looks_scanned(reader, pages):
        raise ExtractionError(NO_TEXT_PDF_MESSAGE)
    return Extracted(kind="pdf", pages=pages, title=_pdf_title(reader, filename))


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


def _pdf_page_texts(reader: Any) -> tuple[list[str], list[Exception]]:
    """Text of every page; a page that fails yields "" so one bad page does not sink the rest."""
    pages: list[str] = []
    failures: list[Exception] = []
    for page in reader.pages:
        try:
            text = page.extract_text()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad page must not sink the others
            failures.append(exc)
            text = ""
        pages.append(clean_text(text or ""))
    return pages, failures


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
        alnum += len(_ALNUM.findall(page))
        if alnum >= enough:
            return False
    if alnum == 0:
        return True
    with_images = sum(1 for page in reader.pages if _page_has_image(page))
    return with_images * 2 >= len(pages)


def _page_has_image(page: Any) -> bool:
    try:
        xobjects = page["/Resources"]["/XObject"]
        return any(
            xobject.get_object().get("/Subtype") == "/Image"
            for xobject in xobjects.values()
        )
    except Exception:  # noqa: BLE001 - missing or broken resources: no image
        return False


# --------------------------------------------------------------------------- DOCX


def _docx_error(reason: str) -> ExtractionError:
    return ExtractionError(
        _sentence(f"The file could not be read as a Word document (DOCX): {reason}")
    )


# libxml2 appends a position and advice meant for programmers to what it found.
_XML_NOISE = re.compile(
    r",? *(use XML_PARSE_HUGE option|see xmlCtxtSetMaxAmplification\.?"
    r"|line \d+, column \d+.*)",
    re.IGNORECASE,
)


def _xml_reason(exc: BaseException) -> str:
    """lxml's "Excessive depth in document: 256, use XML_PARSE_HUGE option, line 1,
    column 9 (<string>, line 1)" becomes "its XML is damaged or hostile (Excessive depth in
    document: 256)"."""
    what = _XML_NOISE.sub("", _short_reason(exc)).strip(" .,")
    return f"its XML is damaged or hostile ({what or type(exc).__name__})."


def _out_of_memory(exc: BaseException) -> bool:
    """libxml2 that runs out of memory under the child's limit says "Memory allocation failed",
    or, when the failing allocation leaves no error code, "unknown error"."""
    reason = str(exc).lower()
    return "memory allocation failed" in reason or reason.startswith("unknown error")


def _extract_docx(
    path: str, filename: str, max_bytes: int, max_pages: int
) -> Extracted:
    try:
        return _read_docx(path, filename, max_bytes)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/lxml/python-docx raise many types
        if type(exc).__name__ == "XMLSyntaxError":  # lxml, without importing it here
            if _out_of_memory(exc):
                raise ExtractionError(LIMITS_MESSAGE) from None
            raise _docx_error(_xml_reason(exc)) from None
        raise _docx_error(_short_reason(exc)) from None


def _read_docx(path: str, filename: str, max_bytes: int) -> Extracted:
    _check_docx_package(path, max_bytes)
    import docx

    document = docx.Document(path)
    blocks = [block for block in _docx_blocks(document) if block.strip()]
    text = clean_text("\n\n".join(blocks))
    title = _clean_title(document.core_properties.title, _stem(filename))
    return Extracted(kind="docx", pages=[text], title=title)


def _check_docx_package(path: str, max_bytes: int) -> None:
    import zipfile

    with zipfile.ZipFile(path) as package:
        infos = package.infolist()
        if not any(info.filename == "word/document.xml" for info in infos):
            raise _docx_error("word/document.xml is missing.")
        unpacked = sum(info.file_size for info in infos)
        limit = max_bytes * _DOCX_EXPANSION_FACTOR
        if unpacked > limit:
            raise ExtractionError(
                f"The document unpacks to {_format_mb(unpacked)} MB; the limit is "
                f"{_format_mb(limit)} MB."
            )
        # The sizes above are what the archive declares, and a zip bomb can lie. zipfile
        # stops at the declared size and then fails the CRC check, but python-docx reads
        # each part in one call, and zipfile inflates up to 2 GB per call before cutting.
        # Reading every part in bounded pieces costs one extra decompression pass.
        for info in infos:
            try:
                with package.open(info) as member:
                    while member.read(_ZIP_READ_BYTES):
                        pass
            except zipfile.BadZipFile:
                raise _docx_error(
                    f"the part '{info.filename[:100]}' is damaged or larger than the "
                    "archive declares."
                ) from None


def _docx_blocks(document: Any) -> list[str]:
    """Body paragraphs and tables in document order, headings as Markdown '#' lines."""
    from docx.table import Table

    blocks: list[str] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.append(_docx_table(item))
        else:
            blocks.append(_docx_paragraph(item))
    return blocks


def _docx_paragraph(paragraph: Any) -> str:
    text = paragraph.text.strip()
    if not text:
        return ""
    style = _style_name(paragraph)
    level = _heading_level(style)
    if level:
        # Headings become Markdown lines so the chunker can prefer breaking at them.
        return "#" * level + " " + " ".join(text.split())
    if style.startswith("list"):
        return "- " + text
    return text


def _style_name(paragraph: Any) -> str:
    try:
        style = paragraph.style
        return (style.name or "").strip().lower() if style is not None else ""
    except (AttributeError, KeyError, ValueError):  # a dangling style reference
        return ""


def _heading_level(style: str) -> int:
    if style == "title":
        return 1
    match = re.fullmatch(r"heading\s*(\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def _docx_table(table: Any) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            # Merged cells are returned once per grid column; keep one copy.
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# --------------------------------------------------------------------------- text kinds


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read()
    return _decode(data)


def _decode(data: bytes) -> str:
    if _has_utf16_bom(data):
        return data.decode("utf-16", "replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if _looks_binary(data[: HEAD_BYTES * 4]):
        raise ExtractionError(NOT_TEXT_MESSAGE)
    # Not UTF-8: most likely a legacy Windows/ISO 8859-1 file; latin-1 never fails.
    return data.decode("latin-1")


def _extract_text(
    path: str, filename: str, max_bytes: int, max_pages: int
) -> Extracted:
    text = clean_text(_read_text(path))
    return Extracted(kind="text", pages=[text], title=_stem(filename))


_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_SETEXT_HEADING = re.compile(r"^ {0,3}(\S[^\n]*)\n {0,3}=+[ \t]*$", re.MULTILINE)


def _extract_markdown(
    path: str, filename: str, max_bytes: int, max_pages: int
) -> Extracted:
    text = clean_text(_read_text(path))
    return Extracted(
        kind="markdown", pages=[text], title=_markdown_title(text, filename)
    )


def _markdown_title(text: str, filename: str) -> str:
    matches = [
        m for m in (_ATX_HEADING.search(text), _SETEXT_HEADING.search(text)) if m
    ]
    if not matches:
        return _stem(filename)
    first = min(matches, key=lambda match: match.start())
    return _clean_title(first.group(1), _stem(filename))


def _extract_html(
    path: str, filename: str, max_bytes: int, max_pages: int
) -> Extracted:
    text, title = html_to_text(_read_text(path))
    return Extracted(
        kind="html",
        pages=[clean_text(text)],
        title=_clean_title(title, _stem(filename)),
    )


# --------------------------------------------------------------------------- HTML

_SKIPPED = frozenset({"script", "style", "head", "noscript", "template", "svg"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
        "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}


class _TextBuilder:
    """Accumulates HTML text with collapsed whitespace and at most one blank line in a row."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.trailing_newlines = 2  # the start of the text counts as after a block

    def add(self, text: str, *, preformatted: bool) -> None:
        if not preformatted:
            text = re.sub(r"\s+", " ", text)
            if self.trailing_newlines or (self.parts and self.parts[-1].endswith(" ")):
                text = text.lstrip(" ")
        if text:
            self.parts.append(text)
            self.trailing_newlines = len(text) - len(text.rstrip("\n"))

    def newline(self, count: int) -> None:
        if self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
        missing = count - self.trailing_newlines
        if missing > 0 and self.parts:
            self.parts.append("\n" * missing)
            self.trailing_newlines = count

    def text(self) -> str:
        return "".join(self.parts).strip("\n ")


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = _TextBuilder()
        self.skipping: dict[str, int] = {}
        self.pre_depth = 0
        self.title_parts: list[str] | None = None
        self.title = ""
        self.first_h1: list[str] | None = None
        self.h1_text = ""
        self.row_cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            # An unclosed <head> ends where <body> starts.
            self.skipping.pop("head", None)
        if tag in _SKIPPED:
            self.skipping[tag] = self.skipping.get(tag, 0) + 1
        elif tag == "title" and not self.title:
            self.title_parts = []
        if self._skipping():
            return
        self._open_block(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skipping():
            self._open_block(tag)

    def _open_block(self, tag: str) -> None:
        if tag == "br":
            self.out.newline(1)
        elif tag in _HEADINGS:
            self.out.newline(2)
            self.out.add("#" * _HEADINGS[tag] + " ", preformatted=True)
            if tag == "h1" and not self.h1_text:
                self.first_h1 = []
        elif tag == "li":
            self.out.newline(1)
            self.out.add("- ", preformatted=True)
        elif tag == "tr":
            self.out.newline(1)
            self.row_cells = 0
        elif tag in ("td", "th"):
            if self.row_cells:
                self.out.add(" | ", preformatted=True)
            self.row_cells += 1
        elif tag == "pre":
            self.out.newline(2)
            self.pre_depth += 1
        elif tag in _BLOCKS:
            self.out.newline(2 if tag in ("p", "blockquote", "table", "hr") else 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED and self.skipping.get(tag):
            self.skipping[tag] -= 1
            if not self.skipping[tag]:
                del self.skipping[tag]
            return
        if tag == "title" and self.title_parts is not None:
            self.title = " ".join("".join(self.title_parts).split())
            self.title_parts = None
        if self._skipping():
            return
        if tag in _HEADINGS:
            if self.first_h1 is not None and tag == "h1":
                self.h1_text = " ".join("".join(self.first_h1).split())
                self.first_h1 = None
            self.out.newline(2)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self.out.newline(2)
        elif tag in _BLOCKS:
            self.out.newline(2 if tag in ("p", "blockquote", "table") else 1)

    def handle_data(self, data: str) -> None:
        if self.title_parts is not None:
            self.title_parts.append(data)
            return
        if self._skipping():
            return
        if self.first_h1 is not None:
            self.first_h1.append(data)
        self.out.add(data, preformatted=self.pre_depth > 0)

    def _skipping(self) -> bool:
        return bool(self.skipping)


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title) of an HTML document; scripts, styles and <head> are dropped."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.out.text(), parser.title or parser.h1_text


_EXTRACTORS: dict[str, Callable[[str, str, int, int], Extracted]] = {
    "pdf": _extract_pdf,
    "docx": _extract_docx,
    "markdown": _extract_markdown,
    "text": _extract_text,
    "html": _extract_html,
}


# --------------------------------------------------------------------------- isolated


def extract_isolated(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    cpu_seconds: int = 120,
    memory_bytes: int = 2 * 1024**3,
    timeout: float = 300,
    max_tokens: int | None = None,
) -> Extracted:
    """Run ``extract_file`` in a child interpreter limited in CPU time, memory and wall time.

    Pass ``max_tokens`` to have the child count the text under the same limits (an over-long
    document is refused there, and ``Extracted.tokens`` spares the caller a second count)."""
    # Obvious rejections need no process.
    _check_size(_file_size(path), max_bytes)
    command = _child_command(
        path,
        filename=filename,
        max_bytes=max_bytes,
        max_pages=max_pages,
        cpu_seconds=cpu_seconds,
        memory_bytes=memory_bytes,
        max_tokens=max_tokens,
    )
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExtractionError(LIMITS_MESSAGE) from None
    except OSError as exc:
        log.error("could not start the extraction process: %s", exc)
        raise ExtractionError(
            "The file could not be processed (internal error)."
        ) from None
    return _parse_child_result(proc)


def _child_command(
    path: str,
    *,
    filename: str,
    max_bytes: int,
    max_pages: int,
    cpu_seconds: int,
    memory_bytes: int,
    max_tokens: int | None = None,
) -> list[str]:
    # Run this file as a script rather than ``-m masscer.lib.extract``: -m imports the parent
    # package ``masscer``, whose __init__ loads Celery and Django settings (~0.2 s and a lot
    # of memory per document). -P keeps masscer/lib itself off sys.path.
    command = [
        sys.executable,
        "-P",
        os.path.abspath(__file__),
        f"--filename={filename.replace(chr(0), '')}",  # argv cannot hold NUL
        f"--max-bytes={max_bytes}",
        f"--max-pages={max_pages}",
        f"--cpu-seconds={cpu_seconds}",
        f"--memory-bytes={memory_bytes}",
        f"--path={os.path.abspath(path)}",
    ]
    if max_tokens is not None:
        command.append(f"--max-tokens={max_tokens}")
    return command


def _parse_child_result(proc: subprocess.CompletedProcess[bytes]) -> Extracted:
    try:
        payload = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        stderr_tail = proc.stderr[-2000:].decode("utf-8", "replace")
        log.warning(
            "extraction child failed (code %s): %s", proc.returncode, stderr_tail
        )
        # Killed by a signal (SIGXCPU, SIGKILL, SIGSEGV...) or out of address space.
        if proc.returncode < 0 or b"MemoryError" in proc.stderr:
            raise ExtractionError(LIMITS_MESSAGE)
        raise ExtractionError("The file could not be processed (internal error).")
    if not payload.get("ok"):
        raise ExtractionError(
            str(payload.get("error") or "The file could not be processed.")
        )
    return Extracted(
        kind=payload["kind"],
        pages=list(payload["pages"]),
        title=payload["title"],
        tokens=payload.get("tokens"),
    )


def _apply_limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Limit this (child) process before it opens the file. Done here rather than in
    preexec_fn because preexec_fn can deadlock when the parent process has threads."""
    import resource

    # SIGXCPU at the soft CPU limit; the hard limit (SIGKILL) a little later as a backstop.
    _set_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    _set_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    _set_limit(resource.RLIMIT_CORE, 0, 0)


def _set_limit(limit: int, soft: int, hard: int) -> None:
    import resource

    _, current_hard = resource.getrlimit(limit)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(limit, (min(soft, hard), hard))


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Extract text from one file; JSON on stdout."
    )
    parser.add_argument("--path", required=True)
    parser.add_argument("--filename", required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--max-pages", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, default=120)
    parser.add_argument("--memory-bytes", type=int, default=2 * 1024**3)
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    _apply_limits(args.cpu_seconds, args.memory_bytes)
    logging.basicConfig(level=logging.ERROR)  # pypdf warnings would only fill stderr
    payload = _child_payload(
        args.path, args.filename, args.max_bytes, args.max_pages, args.max_tokens
    )
    sys.stdout.buffer.write(json.dumps(payload).encode("ascii"))
    sys.stdout.flush()
    return 0


def _child_payload(
    path: str,
    filename: str,
    max_bytes: int,
    max_pages: int,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    try:
        result = extract_file(
            path,
            filename=filename,
            max_bytes=max_bytes,
            max_pages=max_pages,
            max_tokens=max_tokens,
        )
    except ExtractionError as exc:
        return {"ok": False, "error": str(exc)}
    except MemoryError:
        return {"ok": False, "error": LIMITS_MESSAGE}
    except Exception as exc:  # noqa: BLE001 - a bug, not the user's fault; no traceback
        return {
            "ok": False,
            "error": f"The file could not be processed: {_short_reason(exc)}",
        }
    return {
        "ok": True,
        "kind": result.kind,
        "title": result.title,
        "pages": result.pages,
        "tokens": result.tokens,
    }


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
