"""Plain SQL for the few statements every model call runs (the llm worker's hot path).

Building a query through the ORM costs about a millisecond of CPU on the 2-core machine the
benchmarks run on, ten times what sending it costs; with ~10 statements per call and dozens
of calls a second in one process (one GIL), that is most of the worker's CPU. The
statements here are simple (no joins, no conversions besides timestamps, which go through
Django's own adapters) and portable: PostgreSQL and SQLite (3.35+ for RETURNING) alike.
Table and column names come from the models, so a renamed field fails loudly.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Model

from .models import Chunk, Completion, TrainingJob, WorkItem

_ITEMS = WorkItem._meta.db_table
_JOBS = TrainingJob._meta.db_table
_COMPLETIONS = Completion._meta.db_table
_RUNNING = WorkItem.Status.RUNNING
_PENDING = WorkItem.Status.PENDING
_DONE = WorkItem.Status.DONE
_REASONS = WorkItem._meta.get_field("reasons")
_SAMPLES = WorkItem._meta.get_field("samples")
# Parameters per INSERT statement (SQLite before 3.32 allows 999).
_MAX_PARAMS = 900


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


def questions_since(job_id: int, after_id: int) -> list[tuple[int, int, str, str]]:
    """(id, chunk id, question type, question) of the job's completions with an id above
    `after_id`, in order."""
    _, rows = _execute(
        f"SELECT id, chunk_id, question_type, question FROM {_COMPLETIONS} WHERE job_id = %s AND id > %s ORDER BY id",
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
    samples: Sequence[dict[str, str]] | None = None,
) -> bool:
    """Count a call's pairs on the item if `claim` still holds it (and close it if asked);
    `samples` replace the item's rejected-reply samples."""
    sets = ["made = made + %s", "reasons = %s"]
    params: list[Any] = [made, _REASONS.get_db_prep_value(reasons, connection)]
    if samples is not None:
        sets.append("samples = %s")
        params.append(_SAMPLES.get_db_prep_value(list(samples), connection))
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


def open_items(job_id: int) -> tuple[int, int]:
    """How many of the job's work items are pending and how many are running."""
    _, rows = _execute(
        f"SELECT status, COUNT(*) FROM {_ITEMS} WHERE job_id = %s AND status IN (%s, %s) GROUP BY status",
        [job_id, _PENDING, _RUNNING],
    )
    counts = dict(rows)
    return int(counts.get(_PENDING, 0)), int(counts.get(_RUNNING, 0))


def job_agent_ids(job_id: int) -> list[int]:
    """The agents a job's completions go to."""
    through = TrainingJob.agents.through._meta
    agent, job = through.get_field("agent").column, through.get_field("trainingjob").column
    _, rows = _execute(f"SELECT {agent} FROM {through.db_table} WHERE {job} = %s", [job_id])
    return [int(agent_id) for (agent_id,) in rows]


def has_open_items(job_id: int) -> bool:
    _, rows = _execute(
        f"SELECT 1 FROM {_ITEMS} WHERE job_id = %s AND status IN (%s, %s) LIMIT 1",
        [job_id, _PENDING, _RUNNING],
    )
    return bool(rows)


class _Rows:
    """Instances of `model` from plain SQL rows (all concrete fields, in model order), with
    the database converters the ORM would apply (JSON, and on SQLite dates and decimals)."""

    def __init__(self, model: type[Model]) -> None:
        self.model = model
        self.fields = list(model._meta.concrete_fields)
        self.attnames = [f.attname for f in self.fields]
        self.table = model._meta.db_table
        self._converters: list[tuple[int, Any, list[Any]]] | None = None

    def columns(self, alias: str) -> str:
        quote = connection.ops.quote_name
        return ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)

    def build(self, values: Sequence[Any]) -> Any:
        if self._converters is None:
            self._converters = []
            for index, f in enumerate(self.fields):
                col = f.get_col(self.table)
                found = connection.ops.get_db_converters(col) + f.get_db_converters(connection)
                if found:
                    self._converters.append((index, col, found))
        row = list(values)
        for index, col, converters in self._converters:
            for convert in converters:
                row[index] = convert(row[index], col, connection)
        return self.model.from_db(connection.alias, self.attnames, row)


_ITEM_ROWS, _JOB_ROWS, _CHUNK_ROWS = _Rows(WorkItem), _Rows(TrainingJob), _Rows(Chunk)


@functools.cache
def _work_item_sql() -> str:
    quote = connection.ops.quote_name
    job_fk = quote(WorkItem._meta.get_field("job").column)
    chunk_fk = quote(WorkItem._meta.get_field("chunk").column)
    count = f"(SELECT COUNT(*) FROM {_ITEMS} o WHERE o.{job_fk} = w.{job_fk} AND o.status = %s)"
    return (
        f"SELECT {_ITEM_ROWS.columns('w')}, {_JOB_ROWS.columns('j')}, {_CHUNK_ROWS.columns('c')}, {count}, {count} "
        f"FROM {_ITEMS} w JOIN {_JOBS} j ON j.id = w.{job_fk} JOIN {_CHUNK_ROWS.table} c ON c.id = w.{chunk_fk} "
        "WHERE w.id = %s"
    )


def work_item(item_id: int) -> tuple[WorkItem, int, int] | None:
    """A work item with its job and chunk (as `select_related("job", "chunk")` loads them),
    and how many of the job's items are pending and running (as `open_items` counts them)."""
    _, rows = _execute(_work_item_sql(), [_PENDING, _RUNNING, item_id])
    if not rows:
        return None
    row = rows[0]
    a = len(_ITEM_ROWS.fields)
    b = a + len(_JOB_ROWS.fields)
    item = _ITEM_ROWS.build(row[:a])
    item.job = _JOB_ROWS.build(row[a:b])
    item.chunk = _CHUNK_ROWS.build(row[b:-2])
    return item, int(row[-2]), int(row[-1])


@functools.cache
def _insert_parts(
    model: type[Model], ignore_conflicts: bool, skip_on: tuple[str, ...] = ()
) -> tuple[list[Any], str, str, str, list[int]]:
    """The fields an INSERT of `model` writes, its head, one row's placeholders and tail, and
    where the `skip_on` fields are among the written ones."""
    pk = model._meta.pk
    fields = [f for f in model._meta.concrete_fields if f is not pk]
    quote = connection.ops.quote_name
    head = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) VALUES "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    unique = [model._meta.get_field(name) for name in skip_on]
    if unique:
        columns = ", ".join(quote(f.column) for f in unique)
        tail = f" ON CONFLICT ({columns}) DO NOTHING RETURNING {quote(pk.column)}, {columns}"
    elif ignore_conflicts:
        tail = " ON CONFLICT DO NOTHING"
    else:
        tail = f" RETURNING {quote(pk.column)}"
    return fields, head, row, tail, [fields.index(f) for f in unique]


def insert(objs: Sequence[Model], *, ignore_conflicts: bool = False, skip_on: tuple[str, ...] = ()) -> None:
    """INSERT `objs` (all of one model, new, with an auto id) in one statement, as
    `bulk_create` does: defaults and `auto_now_add` applied, ids set on the objects (none
    with `ignore_conflicts`, where rows that clash with a unique constraint are skipped).

    `skip_on` names the fields of one unique constraint: a row that would repeat a stored
    one's values (committed, or being written by a transaction that then commits) is skipped
    in the same statement, and keeps no id; every other constraint still raises. The check
    and the write are one step, whatever other threads and processes do meanwhile. The
    fields must come back from the database as written (ids, text).
    """
    if not objs:
        return
    fields, head, row, tail, unique = _insert_parts(type(objs[0]), ignore_conflicts, skip_on)
    per_statement = max(1, _MAX_PARAMS // len(fields))
    for start in range(0, len(objs), per_statement):
        batch = objs[start : start + per_statement]
        params: list[Any] = []
        for obj in batch:
            params.extend(f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields)
        _, rows = _execute(head + ", ".join([row] * len(batch)) + tail, params)
        if unique:
            # Only the inserted rows come back, in no promised order: match them by their values.
            width = len(fields)
            written: dict[tuple[Any, ...], Model] = {}
            for n, obj in enumerate(batch):  # of two equal rows in one statement, the first is kept
                written.setdefault(tuple(params[n * width + i] for i in unique), obj)
            for returned in rows:
                written[tuple(returned[1:])].pk = returned[0]
            continue
        for obj, returned in zip(batch, rows, strict=False):
            obj.pk = returned[0]
    for obj in objs:
        if obj.pk is not None or not skip_on:
            obj._state.adding = False
            obj._state.db = connection.alias
