"""What every part of text extraction shares: the result and error types, the messages shown
to users, and small text helpers.

The underscored helpers are private to this package (the format modules share them); the
package's public names are re-exported by ``__init__``.

Like the whole package, this module imports no Django and nothing heavy: the isolated child
loads it by file path (see ``__main__``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

_SURROGATES = re.compile("[\ud800-\udfff]")


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


# Hears pages as they are read: (pages in the file, number of the first page, their texts).
PageSink = Callable[[int, int, list[str]], None]


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


def _too_many_tokens(max_tokens: int) -> ExtractionError:
    """The refusal of a document over the token limit (counted in one child or several)."""
    return ExtractionError(
        f"The document has more than {max_tokens:,} tokens of text; the limit is {max_tokens:,}."
    )


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


def _has_utf16_bom(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))
