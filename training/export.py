"""Streamed dataset export: one JSON object per line, constant memory."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db.models import Prefetch, QuerySet

from .models import Assignment, Completion

FORMATS = ("openai-jsonl", "records")
STATUSES = ("approved", "pending", "rejected", "all")
BATCH = 1000


def agent_completions(*, agent: Any, status: str = "approved") -> QuerySet[Completion]:
    if status not in STATUSES:
        raise ValueError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
    rows = Completion.objects.filter(assignments__agent=agent)
    if status != "all":
        rows = rows.filter(status=status)
    return rows.order_by("pk")


def openai_line(completion: Completion, system_prompt: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": completion.question},
            {"role": "assistant", "content": completion.answer},
        ]
    }


def record_line(completion: Completion) -> dict[str, Any]:
    chunk = completion.chunk
    source = chunk.document if chunk.document_id else chunk.conversation
    return {
        "id": completion.pk,
        "question": completion.question,
        "answer": completion.answer,
        "evidence": completion.evidence,
        "status": completion.status,
        "edited": completion.edited,
        "agents": [assignment.agent.slug for assignment in completion.assignments.all()],
        "source_type": chunk.source_type,
        "source_id": source.pk if source else None,
        "source_title": str(source) if source else "",
        "job_id": completion.job_id,
        "model": completion.model,
        "chunk_index": chunk.index,
        "locator": chunk.locator,
        "chunk_text": chunk.text,
        "redacted": completion.redacted,
        "reviewed_at": completion.reviewed_at.isoformat() if completion.reviewed_at else None,
        "created_at": completion.created_at.isoformat(),
    }


def export_lines(*, agent: Any, fmt: str, status: str = "approved") -> Iterator[str]:
    """Yield JSON lines (with trailing newline) for an agent's completions."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    rows = agent_completions(agent=agent, status=status)
    if fmt == "openai-jsonl":
        for completion in rows.only("pk", "question", "answer").iterator(chunk_size=BATCH):
            yield json.dumps(openai_line(completion, agent.system_prompt), ensure_ascii=False) + "\n"
        return
    rows = rows.select_related("chunk", "chunk__document", "chunk__conversation").prefetch_related(
        Prefetch("assignments", queryset=Assignment.objects.select_related("agent"))
    )
    for completion in rows.iterator(chunk_size=BATCH):
        yield json.dumps(record_line(completion), ensure_ascii=False) + "\n"
