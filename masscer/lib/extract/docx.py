"""Word (DOCX) extraction with python-docx: body paragraphs and tables in document order,
headings as Markdown lines. The package is checked for zip bombs before python-docx loads it;
python-docx (and lxml) are imported only when a DOCX is read."""

from __future__ import annotations

import re
from typing import Any

from .common import (
    LIMITS_MESSAGE,
    Extracted,
    ExtractionError,
    _clean_title,
    _format_mb,
    _sentence,
    _short_reason,
    _stem,
    clean_text,
)

# A DOCX may legitimately hold large images, but XML that unpacks to many times the upload
# limit is a zip bomb; python-docx would load it all into memory.
_DOCX_EXPANSION_FACTOR = 20
_ZIP_READ_BYTES = 1024 * 1024


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
