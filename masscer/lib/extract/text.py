"""Plain text and Markdown: decoding (UTF-8, UTF-16 with a BOM, else Latin-1) and the
Markdown title (the first heading)."""

from __future__ import annotations

import re

from .common import (
    HEAD_BYTES,
    NOT_TEXT_MESSAGE,
    Extracted,
    ExtractionError,
    _clean_title,
    _has_utf16_bom,
    _looks_binary,
    _stem,
    clean_text,
)


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
