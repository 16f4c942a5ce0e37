"""Read conversation files into plain data: OpenAI chat `messages`, ShareGPT, ChatGPT export.

Pure parsing: no database and no models, so it can be tested and benchmarked alone. A file
that cannot be read at all raises `ImportFormatError`; a file that can be read yields every
usable conversation plus one `Problem` per conversation (or JSONL line) that could not be
used, so one bad conversation never costs the others.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from masscer.lib import jsonsafe

from .formats import (
    PARSERS,
    ConversationError,
    ParsedConversation,
    ParsedMessage,
    Parser,
    own_id,
)

__all__ = [  # the parsed-data types live in .formats; callers import them from here
    "ACCEPTED",
    "DEFAULT_MAX_BYTES",
    "FORMATS",
    "ImportFormatError",
    "ParseResult",
    "ParsedConversation",
    "ParsedMessage",
    "Problem",
    "detect_format",
    "ensure_size_within",
    "human_size",
    "parse",
]

FORMATS = ("openai", "sharegpt", "chatgpt")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
ACCEPTED = "OpenAI chat messages JSON/JSONL, ShareGPT JSON, ChatGPT data export (conversations.json or its .zip)"
NOT_RECOGNISED = f"not a recognised conversation file; accepted: {ACCEPTED}"
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class ImportFormatError(ValueError):
    """The file as a whole cannot be read; nothing in it can be imported."""


@dataclass(frozen=True)
class Problem:
    index_or_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.index_or_id}: {self.reason}"


@dataclass
class ParseResult:
    format: str
    conversations: list[ParsedConversation] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class _Record:
    """One would-be conversation: its place in the file, and its JSON value or why it has none."""

    index: str
    value: Any = None
    error: str = ""


# --------------------------------------------------------------------------- entry points


def detect_format(data: bytes, filename: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """"openai", "sharegpt" or "chatgpt", from the content (the name only says zip or JSONL)."""
    return _detect(_records(_load_text(data, filename, max_bytes=max_bytes), filename))


def parse(
    data: bytes, filename: str, fmt: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> ParseResult:
    """Every usable conversation of the file, and a problem for each unusable one."""
    if fmt is not None and fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    records = _records(_load_text(data, filename, max_bytes=max_bytes), filename)
    fmt = fmt or _detect(records)
    result = ParseResult(format=fmt)
    for record in records:
        _parse_record(record, PARSERS[fmt], result)
    return result


def ensure_size_within(size: int, *, max_bytes: int) -> None:
    """Reject an over-limit file before anything reads it."""
    if size <= max_bytes:
        return
    shown, limit = human_size(size), human_size(max_bytes)
    if shown == limit:  # "50.0 MB; the limit is 50.0 MB" would read as a contradiction
        shown, limit = f"{size:,} bytes", f"{max_bytes:,} bytes"
    raise ImportFormatError(f"The file is {shown}; the limit is {limit}.")


def human_size(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _parse_record(record: _Record, parser: Parser, result: ParseResult) -> None:
    if record.error:
        result.problems.append(Problem(record.index, record.error))
        return
    label = own_id(record.value) or record.index
    if not isinstance(record.value, dict):
        result.problems.append(Problem(label, "not a conversation object"))
        return
    try:
        result.conversations.append(parser(record.value, record.index))
    except ConversationError as exc:
        result.problems.append(Problem(label, str(exc)))


# --------------------------------------------------------------------------- bytes to records


def _load_text(data: bytes, filename: str, *, max_bytes: int) -> str:
    ensure_size_within(len(data), max_bytes=max_bytes)
    if data[:2] == b"PK" or filename.lower().endswith(".zip"):
        data = _unzip_conversations(data, max_bytes=max_bytes)
    if not data.strip():
        raise ImportFormatError("The file is empty.")
    try:
        # detect_encoding also understands the UTF-16/32 files some Windows tools write.
        return data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"{NOT_RECOGNISED} (it is not UTF-8 text)") from exc


def _unzip_conversations(data: bytes, *, max_bytes: int) -> bytes:
    """conversations.json out of a ChatGPT export .zip, never inflating more than max_bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = _conversations_member(archive)
            _ensure_unpacked_within(member.file_size, max_bytes=max_bytes)
            with archive.open(member) as stream:
                # The declared size can lie (zip bombs do); the bounded read cannot.
                content = stream.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ImportFormatError(f"The .zip file cannot be read ({exc}).") from exc
    _ensure_unpacked_within(len(content), max_bytes=max_bytes)
    return content


def _conversations_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    found = [
        info for info in archive.infolist()
        if PurePosixPath(info.filename).name == "conversations.json" and not info.is_dir()
    ]
    if not found:
        raise ImportFormatError(f"The .zip holds no conversations.json; {NOT_RECOGNISED}")
    return min(found, key=lambda info: (info.filename.count("/"), info.filename))


def _ensure_unpacked_within(size: int, *, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImportFormatError(
            f"conversations.json in the .zip is over {human_size(max_bytes)} uncompressed; "
            f"the limit is {human_size(max_bytes)}."
        )


def _records(text: str, filename: str) -> list[_Record]:
    if not text.lstrip().startswith(("{", "[")):
        raise ImportFormatError(NOT_RECOGNISED)
    if filename.lower().endswith(JSONL_SUFFIXES):
        records = _jsonl_records(text)
        if not all(record.error for record in records):
            return records
        # No line parses alone: perhaps a whole JSON document under a .jsonl name.
    try:
        value = jsonsafe.loads(text, what="The file")
    except jsonsafe.JSONInputError as exc:
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):
            if _is_next_line(text, cause):
                return _jsonl_records(text)
            raise ImportFormatError(f"invalid JSON at line {cause.lineno} column {cause.colno}: {cause.msg}") from exc
        raise ImportFormatError(str(exc)) from exc
    return _document_records(value)


def _is_next_line(text: str, exc: json.JSONDecodeError) -> bool:
    """True when a complete JSON value is followed by more on a new line: JSON Lines."""
    if exc.msg != "Extra data":
        return False
    newline = text.rfind("\n", 0, exc.pos)
    return newline >= 0 and not text[newline:exc.pos].strip()


def _jsonl_records(text: str) -> list[_Record]:
    return [
        _jsonl_record(line, f"line {number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _jsonl_record(line: str, index: str) -> _Record:
    try:
        value = jsonsafe.loads(line, what="The line")
    except jsonsafe.JSONInputError as exc:
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):
            return _Record(index, error=f"invalid JSON at column {cause.colno}: {cause.msg}")
        return _Record(index, error=str(exc))
    return _Record(index, _wrap_bare_messages(value))


def _document_records(value: Any) -> list[_Record]:
    value = _wrap_bare_messages(value)
    if isinstance(value, dict):
        return [_Record("#1", value)]
    if not isinstance(value, list):
        raise ImportFormatError(NOT_RECOGNISED)
    if not value:
        raise ImportFormatError("The file holds no conversations.")
    return [_Record(f"#{number}", item) for number, item in enumerate(value, start=1)]


def _wrap_bare_messages(value: Any) -> Any:
    """A bare list of {role, content} messages is one OpenAI conversation."""
    if isinstance(value, list) and value and all(isinstance(item, dict) and "role" in item for item in value):
        return {"messages": value}
    return value


def _detect(records: list[_Record]) -> str:
    for record in records:
        if isinstance(record.value, dict):
            fmt = _detect_value(record.value)
            if fmt:
                return fmt
            break
    raise ImportFormatError(NOT_RECOGNISED)


def _detect_value(value: dict[str, Any]) -> str | None:
    if isinstance(value.get("mapping"), dict):
        return "chatgpt"
    if isinstance(value.get("messages"), list):
        return "openai"
    if isinstance(value.get("conversations"), list):
        return "sharegpt"
    return None
