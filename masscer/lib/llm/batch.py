"""Batch mode (OpenAI files + batches endpoints): the pair requests of chat mode, answered later.

The same pair-generation requests as chat mode, sent as one JSONL file and
answered within the completion window (24 h) at a lower price, and the judge
requests of ``judge`` (``JudgeItem``) alongside them.  Each output line is parsed
exactly like a live reply (a judge line like a live judge reply); lines that failed come back as
LLMTransientError / LLMPermanentError, mapped like live errors.  Batch mode
is chat mode only: base models behind the completion endpoint have no
batch API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from .client import client_for, format_key
from .errors import (
    SDK_PARSE_ERRORS,
    LLMError,
    LLMPermanentError,
    LLMTransientError,
    error_detail,
    map_error,
    not_openai,
    redact,
    scrub,
    shorten,
    status_error,
)
from .judge import JudgeItem, JudgeReply, judge_reply, judge_request
from .pairs import FORMAT_LEVELS, build_chat_request, chat_reply, downgrade_format_level, format_level
from .parsing import as_int, as_text, namespace
from .types import DEFAULT_GUIDANCE, DEFAULT_PARAMS, GenParams, Guidance, LLMConfig, Reply

BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_WINDOW = "24h"
# Statuses after which a batch changes no more.
BATCH_FINAL = ("completed", "failed", "expired", "cancelled")
# Per-line error codes (no HTTP response) that will not go away on a retry.
_PERMANENT_LINE_CODES = frozenset(
    {"invalid_request", "invalid_request_error", "invalid_api_key", "model_not_found"}
)


@dataclass(frozen=True)
class BatchItem:
    """One pair-generation request of a batch; the arguments of ``generate_pairs``."""

    custom_id: str
    source: str
    count: int
    existing_questions: tuple[str, ...] = ()
    instructions: str = ""
    params: GenParams = DEFAULT_PARAMS
    feedback: str | None = None
    source_kind: str = "document"
    style: str = "synthesize"
    overlap_chars: int = 0
    guidance: Guidance = DEFAULT_GUIDANCE


@dataclass(frozen=True)
class BatchState:
    """What the provider says about a batch."""

    status: str
    request_counts: Mapping[str, int]
    output_file_id: str | None
    error_file_id: str | None
    errors: tuple[str, ...] = ()
    batch_id: str = ""

    @property
    def done(self) -> bool:
        return self.status in BATCH_FINAL


def batch_jsonl(config: LLMConfig, items: Sequence[BatchItem | JudgeItem]) -> bytes:
    """The batch input file: one ``{"custom_id", "method", "url", "body"}`` line per item."""
    _require_chat(config)
    if not items:
        raise ValueError("a batch needs at least one request")
    ids = [item.custom_id for item in items]
    if len(set(ids)) != len(ids) or not all(ids):
        raise ValueError("every batch request needs its own non-empty custom_id")
    lines = []
    for item in items:
        body = _request_body(config, item)
        line = {"custom_id": item.custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body}
        lines.append(json.dumps(line, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _request_body(config: LLMConfig, item: BatchItem | JudgeItem) -> dict[str, Any]:
    if isinstance(item, JudgeItem):
        return judge_request(
            config, source=item.source, pairs=item.pairs, params=item.params, question_type=item.question_type
        )
    return build_chat_request(
        config,
        source=item.source,
        count=item.count,
        existing_questions=item.existing_questions,
        instructions=item.instructions,
        params=item.params,
        feedback=item.feedback,
        source_kind=item.source_kind,
        style=item.style,
        overlap_chars=item.overlap_chars,
        guidance=item.guidance,
    )


def batch_submit(
    config: LLMConfig,
    items: Sequence[BatchItem | JudgeItem],
    *,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Upload the requests and start a batch; returns the batch id.

    Raises ValueError for completion mode or bad items, else LLMTransientError /
    LLMPermanentError like every model call.
    """
    data = batch_jsonl(config, items)
    client = client_for(config)
    upload = _batch_call(
        config,
        "upload the batch file",
        lambda: client.files.create(
            file=("masscer-batch.jsonl", data, "application/jsonl"), purpose="batch"
        ),
        first=True,
    )
    extra: dict[str, Any] = {"metadata": dict(metadata)} if metadata else {}
    batch = _batch_call(
        config,
        "create the batch",
        lambda: client.batches.create(
            input_file_id=_required_id(upload, config),
            endpoint=BATCH_ENDPOINT,
            completion_window=BATCH_WINDOW,
            **extra,
        ),
    )
    return _required_id(batch, config)


def batch_poll(config: LLMConfig, batch_id: str) -> BatchState:
    """The batch's status, request counts, result files and errors."""
    _require_chat(config)
    client = client_for(config)
    batch = _batch_call(
        config, f"look up batch {batch_id}", lambda: client.batches.retrieve(batch_id)
    )
    status = as_text(getattr(batch, "status", None))
    if not status:
        raise not_openai(config)
    counts = getattr(batch, "request_counts", None)
    return BatchState(
        status=status,
        request_counts={
            name: as_int(getattr(counts, name, 0)) for name in ("total", "completed", "failed")
        },
        output_file_id=as_text(getattr(batch, "output_file_id", None)) or None,
        error_file_id=as_text(getattr(batch, "error_file_id", None)) or None,
        errors=_batch_errors(batch),
        batch_id=as_text(getattr(batch, "id", None)) or batch_id,
    )


def batch_cancel(config: LLMConfig, batch_id: str) -> None:
    """Ask the provider to stop a batch (results made so far stay available)."""
    _require_chat(config)
    client = client_for(config)
    _batch_call(config, f"cancel batch {batch_id}", lambda: client.batches.cancel(batch_id))


def batch_results(
    config: LLMConfig, state: BatchState, *, model: str = "", judged: Mapping[str, int] | None = None
) -> Iterator[tuple[str, Reply | JudgeReply | LLMError]]:
    """Every answered line of a finished batch as (custom_id, Reply, JudgeReply or error).

    ``judged`` names the judge requests (custom_id -> how many pairs each scored): their
    lines come back as JudgeReply.

    Output lines are parsed exactly like live replies; error lines (and output
    lines with an HTTP error status) are mapped like live errors.  Requests the
    batch never got to (a failed batch) are simply absent.  ``model`` is the
    model the requests named (default ``config.model``): a line that rejects
    the response format lowers the format for that model, like chat mode does,
    and comes back as transient so the next request uses the lower format.
    """
    _require_chat(config)
    model = model or config.model
    # The level the batch's requests were built with (a rejection lowers it once).
    level = format_level(format_key(config, model))
    for file_id in (state.output_file_id, state.error_file_id):
        if not file_id:
            continue
        for line in _file_lines(config, file_id):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not attributable to a request; it counts as missing
            custom_id = record.get("custom_id") if isinstance(record, Mapping) else None
            if not isinstance(custom_id, str) or not custom_id:
                continue
            count = (judged or {}).get(custom_id)
            yield custom_id, _line_outcome(record, config, model, level, count)


def _require_chat(config: LLMConfig) -> None:
    if config.mode != "chat":
        raise ValueError(
            "Batch mode needs chat mode (the OpenAI batches API runs Chat Completions); "
            f"this endpoint is configured for {config.mode!r}"
        )


def _required_id(obj: Any, config: LLMConfig) -> str:
    value = as_text(getattr(obj, "id", None))
    if not value:
        raise not_openai(config)
    return value


def _batch_call(config: LLMConfig, what: str, call: Any, *, first: bool = False) -> Any:
    """Make one files/batches API call, with errors mapped; `first` = the upload."""
    try:
        return call()
    except openai.NotFoundError as exc:
        # Here a 404 is about a path or an id, not about a model.
        scrub(exc, config.api_key)
        detail = error_detail(exc)
        hint = "; does it offer the OpenAI files and batches API?" if first else ""
        raise LLMPermanentError(
            redact(
                f"Model server at {config.base_url} could not {what} (404)"
                + (f": {detail}" if detail else "")
                + hint,
                config.api_key,
            ),
            status_code=404,
        ) from exc
    except openai.OpenAIError as exc:
        raise map_error(exc, config, config.model) from exc
    except SDK_PARSE_ERRORS as exc:
        raise not_openai(config) from exc


def _batch_errors(batch: Any) -> tuple[str, ...]:
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    messages = []
    for error in data:
        message = as_text(getattr(error, "message", None)) or as_text(getattr(error, "code", None))
        line = getattr(error, "line", None)
        if message:
            messages.append(shorten(f"line {line}: {message}" if line else message))
    return tuple(messages)


def _file_lines(config: LLMConfig, file_id: str) -> list[str]:
    client = client_for(config)
    content = _batch_call(
        config, f"download file {file_id}", lambda: client.files.content(file_id)
    )
    raw = getattr(content, "content", content)
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else as_text(raw)
    return [line for line in text.splitlines() if line.strip()]


def _line_outcome(
    record: Mapping[str, Any], config: LLMConfig, model: str, level: int, judged: int | None = None
) -> Reply | JudgeReply | LLMError:
    response = record.get("response")
    if isinstance(response, Mapping):
        status = as_int(response.get("status_code"))
        body = response.get("body")
        if status == 200 and isinstance(body, Mapping):
            try:
                if judged is not None:
                    return judge_reply(namespace(body), config, model, judged)
                return chat_reply(namespace(body), config, model)
            except LLMError as exc:
                return exc
        return _line_status_error(status, body, config, model, level)
    error = record.get("error")
    error = error if isinstance(error, Mapping) else {}
    code = as_text(error.get("code"))
    message = shorten(as_text(error.get("message")) or code or "no result")
    text = redact(f"Batch request failed ({code or 'error'}): {message}", config.api_key)
    if code in _PERMANENT_LINE_CODES:
        return LLMPermanentError(text)
    return LLMTransientError(text)


def _line_status_error(
    status: int, body: Any, config: LLMConfig, model: str, level: int
) -> LLMError:
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    detail = shorten(as_text(error.get("message")))
    code = as_text(error.get("code")) or None
    if status in (400, 422) and level < len(FORMAT_LEVELS) - 1 and (
        error.get("param") == "response_format"
        or any(word in detail.lower() for word in ("response_format", "json_schema", "json_object"))
    ):
        downgrade_format_level(format_key(config, model), level)
        return LLMTransientError(
            f"Model server rejected the response format ({status}); the next request uses a simpler one",
            status_code=status,
        )
    mapped = status_error(status or 500, detail, config, model, code=code)
    mapped.message = redact(mapped.message, config.api_key)
    mapped.args = (mapped.message,)
    return mapped
