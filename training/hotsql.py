"""Plain SQL for the few statements every model call runs (the llm worker's hot path).

Building a query through the ORM costs about a millisecond of CPU on the 2-core machine the
benchmarks run on, ten times what sending it costs; with ~10 statements per call and dozens
of calls a second in one process (one GIL), that is most of the worker's CPU. The
statements here are simple (no joins, no conversions besides timestamps, which go through
Django's own adapters) and portable: PostgreSQL and SQLite (3.35+ for RETURNING) alike.
Table and column names come from the models, so a renamed field fails loudly.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection

from .models import Completion, TrainingJob, WorkItem

_ITEMS = WorkItem._meta.db_table
_JOBS = TrainingJob._meta.db_table
_COMPLETIONS = Completion._meta.db_table
_RUNNING = WorkItem.Status.RUNNING
_PENDING = WorkItem.Status.PENDING
_DONE = WorkItem.Status.DONE
_REASONS = WorkItem._meta.get_field("reasons")


def _when(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _execute(sql: str, params: Sequence[Any]) -> tuple[int, list[tuple[Any, ...]]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.rowcount, rows


def claim(item_id: int, *, now: datetime, lease_until: datetime) -> int | None:
    """Take a pending item, or a running one whose lease ran out: the new claim number, or None."""
    _, rows = _execute(
        f"UPDATE {_ITEMS} SET status = %s, attempts = attempts + 1, lease_expires_at = %s "
        "WHERE id = %s AND (status = %s OR (status = %s AND lease_expires_at < %s)) RETURNING attempts",
        [_RUNNING, _when(lease_until), item_id, _PENDING, _RUNNING, _when(now)],
    )
    return int(rows[0][0]) if rows else None


def questions_since(job_id: int, after_id: int) -> list[tuple[int, int, str]]:
    """(id, chunk id, question) of the job's completions with an id above `after_id`, in order."""
    _, rows = _execute(
        f"SELECT id, chunk_id, question FROM {_COMPLETIONS} WHERE job_id = %s AND id > %s ORDER BY id",
        [job_id, after_id],
    )
    return rows  # type: ignore[return-value]


def item_stored(
    item_id: int,
    claim: int,
    *,
    made: int,
    calls: int,
    reasons: dict[str, int],
    close: bool,
) -> bool:
    """Count a call's pairs on the item if `claim` still holds it (and close it if asked)."""
    sets = ["made = made + %s", "reasons = %s"]
    params: list[Any] = [made, _REASONS.get_db_prep_value(reasons, connection)]
    if calls:
        sets += ["calls = calls + %s", "unavailable_since = NULL"]
        params.append(calls)
    if close:
        sets += ["status = %s", "lease_expires_at = NULL"]
        params.append(_DONE)
    count, _ = _execute(
        f"UPDATE {_ITEMS} SET {', '.join(sets)} WHERE id = %s AND status = %s AND attempts = %s",
        [*params, item_id, _RUNNING, claim],
    )
    return count == 1


def job_counted(
    job_id: int,
    *,
    created: int,
    calls: int,
    prompt_tokens: int,
    completion_tokens: int,
    cost: Decimal,
    chunks_done: int,
) -> None:
    """Add a call's figures to the job's counters."""
    _execute(
        f"UPDATE {_JOBS} SET created_count = created_count + %s, calls = calls + %s, "
        "prompt_tokens = prompt_tokens + %s, completion_tokens = completion_tokens + %s, "
        "cost = cost + %s, chunks_done = chunks_done + %s WHERE id = %s",
        [
            created,
            calls,
            prompt_tokens,
            completion_tokens,
            connection.ops.adapt_decimalfield_value(cost, 12, 6),
            chunks_done,
            job_id,
        ],
    )


def has_open_items(job_id: int) -> bool:
    _, rows = _execute(
        f"SELECT 1 FROM {_ITEMS} WHERE job_id = %s AND status IN (%s, %s) LIMIT 1",
        [job_id, _PENDING, _RUNNING],
    )
    return bool(rows)

