"""`train --estimate`: chunk the files here (no job, no rows) and print what the job would take."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from conversations.chunking import message_chunk_specs
from conversations.importers import ImportFormatError, parse
from masscer.lib.extract import ExtractionError, extract_isolated
from masscer.lib.tokens import chunk_pages
from training.estimate import estimate, price_for, user_turns
from training.models import TrainingJob
from training.question_types import parse_types
from training.services.jobs import job_judge_setting


def chunks_of(path: Path, *, conversation: bool) -> list[tuple[int, str]]:
    """(tokens, text) of every chunk the file would give, as the workers would cut it."""
    budget, overlap = settings.MASSCER_CHUNK_TOKENS, settings.MASSCER_CHUNK_OVERLAP
    if conversation:
        try:
            parsed = parse(path.read_bytes(), path.name, max_bytes=settings.MASSCER_MAX_UPLOAD_BYTES)
        except ImportFormatError as exc:
            raise CommandError(f"{path.name}: {exc}") from exc
        return [
            (spec.token_count, spec.text)
            for item in parsed.conversations
            for spec in message_chunk_specs(
                [_message(i, m) for i, m in enumerate(item.messages)], budget=budget, overlap=overlap
            )
        ]
    try:
        extracted = extract_isolated(
            str(path),
            filename=path.name,
            max_bytes=settings.MASSCER_MAX_UPLOAD_BYTES,
            max_pages=settings.MASSCER_MAX_PAGES,
        )
    except ExtractionError as exc:
        raise CommandError(f"{path.name}: {exc}") from exc
    return [(spec.token_count, spec.text) for spec in chunk_pages(extracted.pages, budget=budget, overlap=overlap)]


class _message:  # noqa: N801 - a tiny adapter, used like a function
    def __init__(self, position: int, parsed: Any) -> None:
        self.position = position
        self.role = parsed.role
        self.content = parsed.content
        self.name = parsed.name
        self.tool_calls = parsed.tool_calls
        self.tool_call_id = parsed.tool_call_id


def _judge_on(options: dict[str, Any]) -> bool:
    """Whether the job would judge its pairs (the rule `job_create` applies; a refusal is said here too)."""
    mode = TrainingJob.Mode.BATCH if options["batch"] else TrainingJob.Mode.LIVE
    try:
        return job_judge_setting(options.get("judge"), options.get("judge_threshold") or 4, mode)
    except ValidationError as exc:
        raise CommandError(" ".join(exc.messages)) from exc


def _types(options: dict[str, Any]) -> dict[str, int]:
    """`--types` as the job would take it (a typo is refused here as it would be there)."""
    try:
        return parse_types(options.get("types") or "") or {}
    except ValidationError as exc:
        raise CommandError(" ".join(exc.messages)) from exc


def print_estimate(command: Any, paths: list[Path], options: dict[str, Any], suffixes: set[str]) -> None:
    types = _types(options)
    shapes = [(p, chunks_of(p, conversation=p.suffix.lower() in suffixes)) for p in paths]
    chunks = [c for _, found in shapes for c in found]
    # A document's chunks may share a call (a span); a conversation's chunks are asked alone.
    sources = [None if p.suffix.lower() in suffixes else n for n, (p, found) in enumerate(shapes) for _ in found]
    model = options["model"] or settings.MASSCER_LLM_MODEL
    price = price_for(settings.MASSCER_LLM_PRICES, model)
    if price is not None and options["batch"]:
        factor = Decimal(str(settings.MASSCER_BATCH_PRICE_FACTOR))
        price = (price[0] * factor, price[1] * factor)
    result = estimate(
        count=options["count"],
        chunk_tokens=[tokens for tokens, _ in chunks],
        pairs_per_call=settings.MASSCER_PAIRS_PER_CALL,
        calls_per_batch=settings.MASSCER_CALLS_PER_BATCH,
        caps=[user_turns(text) for _, text in chunks] if options["style"] == "mine" else None,
        max_tokens=options["max_tokens"],
        price=price,
        judge=_judge_on(options),
        sources=sources,
        min_pairs=settings.MASSCER_MIN_PAIRS_PER_CALL,
        span_tokens=settings.MASSCER_SPAN_MAX_TOKENS,
        types=None if options["style"] == "mine" else types,
    )
    summary = {
        "requested": result.requested,
        "planned": result.planned,
        "chunks_total": result.chunks_total,
        "chunks_used": result.chunks_used,
        "model_calls": result.calls,
        "model_calls_max": result.calls_max,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "model": model,
        "cost": float(result.cost) if result.cost is not None else None,
    }
    if options["json"]:
        command.stdout.write(json.dumps(summary))
        return
    cost = f"{result.cost:.4f}" if result.cost is not None else f"no price set for {model} (MASSCER_LLM_PRICES)"
    command.stdout.write(
        "\n".join(
            [
                f"Estimate for {result.requested} completions with {model}:",
                f"  chunks: {result.chunks_used} used of {result.chunks_total}",
                f"  model calls: {result.calls} (at most {result.calls_max} with retries)",
                f"  tokens: {result.prompt_tokens} prompt + {result.completion_tokens} completion",
                f"  cost: {cost}",
            ]
            + ([f"  the sources give at most {result.planned}"] if result.planned < result.requested else [])
        )
    )
