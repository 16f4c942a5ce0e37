"""JSON from users, read so that every way it can be wrong is a clear error (a 400), never a 500.

`json.loads` accepts what the rest of the program cannot take: a lone UTF-16 surrogate
(``"\\ud800"``, which no database can store as UTF-8), nesting deep enough to exhaust the
recursion limit (a ``RecursionError``, not a ``ValueError``) or that later code cannot walk
or serialise, and integers of thousands of digits (a ``ValueError`` past Python's 4,300-digit
limit, but not a ``JSONDecodeError``). `loads` turns all of them into `JSONInputError`, a
``ValueError`` whose message says what is wrong and where.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "JSONInputError", "loads", "check_value", "check_text"]

# Far deeper than any conversation export or API body needs (a ChatGPT export is ~6 deep).
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONInputError(ValueError):
    """The text is not JSON this program can take; the message says why."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH, what: str = "The JSON") -> Any:
    """Parse JSON from a user; raise JSONInputError for anything a later step could not take."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"{what} is not UTF-8 text (byte {exc.start}).") from exc
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from exc
    except RecursionError as exc:
        raise JSONInputError(f"{what} is nested too deeply (more than {max_depth} levels).") from exc
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise JSONInputError(f"{what} holds a value that cannot be read: {_first_line(exc)}.") from exc
    check_value(value, max_depth=max_depth, what=what)
    return value


def check_value(value: Any, *, max_depth: int = MAX_DEPTH, what: str = "The JSON") -> None:
    """Raise JSONInputError if ``value`` nests deeper than ``max_depth`` or holds a lone surrogate.

    Iterative, so a value too deep for recursion is reported, not crashed on.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, what=what)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise JSONInputError(f"{what} is nested too deeply (more than {max_depth} levels).")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def check_text(text: str, *, what: str = "The text") -> None:
    """Raise JSONInputError if ``text`` holds a lone surrogate (not storable as UTF-8)."""
    match = _SURROGATE.search(text)
    if match is not None:
        raise JSONInputError(
            f"{what} holds an invalid character (a lone UTF-16 surrogate, \\u{ord(match.group()):04x}): "
            "check the file's encoding."
        )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
