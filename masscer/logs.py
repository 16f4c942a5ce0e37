"""Log records that say which request, task, job and work item they belong to.

The ids live in a context variable: the request-id middleware binds `request_id` for a web
request, the Celery signals (masscer.celery) bind the task's id and the ids in its arguments,
and `ContextFilter` copies them onto every record. Production writes one JSON object per
line (`JsonFormatter`); development writes readable lines with the ids at the end
(`TextFormatter`). Standard library only.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# The ids of what is running now. The mapping is never changed in place: binding sets a new one.
_context: ContextVar[Mapping[str, Any]] = ContextVar("masscer_log_context", default=MappingProxyType({}))

# Ids written on every record, in this order (absent ones are left out).
CONTEXT_FIELDS = ("request_id", "task", "task_id", "job_id", "work_item_id", "document_id", "import_id")

# Task arguments that name another field than their own (generate_task(item_id) is a work item).
_ARGUMENT_FIELDS = {"item_id": "work_item_id"}

# An incoming X-Request-ID is kept only if it is this tame (it ends up in logs and headers).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def current() -> Mapping[str, Any]:
    return _context.get()


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ids to the context (None values are skipped); `unbind(token)` restores what was before."""
    merged = {**_context.get(), **{name: value for name, value in fields.items() if value is not None}}
    return _context.set(merged)


def unbind(token: Token[Mapping[str, Any]]) -> None:
    try:
        _context.reset(token)
    except ValueError:  # bound in another context (a thread that is not this one): start afresh
        _context.set({})


def bind_to_task(**fields: Any) -> None:
    """Add ids for the rest of the running Celery task, whose end undoes them (so Celery's own
    lines about it carry them too); outside a task, nothing."""
    if "task_id" in _context.get():
        bind(**fields)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def sane_request_id(value: str | None) -> str | None:
    """The incoming request id if it is a short token of safe characters, else None."""
    value = (value or "").strip()
    return value if _SANE_REQUEST_ID.fullmatch(value) else None


def task_fields(task: Any, args: tuple[Any, ...] | None, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ids a task was called with (`job_id`, `item_id` as `work_item_id`, ...), by parameter name."""
    try:
        arguments = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except (TypeError, ValueError):  # not the task's signature: log without the ids
        return {}
    return {
        _ARGUMENT_FIELDS.get(name, name): value
        for name, value in arguments.items()
        if name.endswith("_id") and isinstance(value, int | str)
    }


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (on a handler, so records of every logger get them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if getattr(record, name, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context ids, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context_of(record),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual readable line, with the context ids in brackets after the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _context_of(record)
        if not ids:
            return line
        suffix = " [" + " ".join(f"{name}={value}" for name, value in ids.items()) + "]"
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return first + suffix + newline + rest
