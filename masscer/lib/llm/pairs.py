"""Pair generation: one model request for N question/answer pairs grounded in a text.

Chat mode sends Chat Completions with a JSON schema (``response_format``), falling back
to JSON mode and then to none for servers that refuse it; the fallback is remembered per
(base_url, model). Completion mode sends a few-shot prompt to the Completions API, for
base models. Either way the reply is parsed, never trusted: a reply that does not parse
is *not* an exception (see ``Reply.parse_error``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx2
import openai

from .client import client_for, format_key, model_for, request_params
from .errors import SDK_PARSE_ERRORS, error_detail, map_error, not_openai, shorten
from .parsing import (
    as_text,
    finish_reason_of,
    first_choice,
    namespace,
    parse_block_pairs,
    parse_json_pairs,
    usage_of,
)
from .prompts import (
    COMPLETION_STOPS,
    QUESTION_LABEL,
    chat_user_message,
    completion_prompt,
    neutralise,
    system_message,
)
from .types import (
    DEFAULT_GUIDANCE,
    DEFAULT_PARAMS,
    SOURCE_KINDS,
    STYLES,
    GenParams,
    Guidance,
    LLMConfig,
    Pair,
    PairRequest,
    Reply,
)

# The Completions API (OpenAI and llama-cpp-python) defaults to 16 tokens,
# which would truncate every reply, so completion mode always sends a budget.
_COMPLETION_TOKENS_PER_PAIR = 100
_COMPLETION_TOKENS_BASE = 48


def generate_pairs(
    config: LLMConfig,
    *,
    source: str,
    count: int,
    existing_questions: Sequence[str] = (),
    instructions: str = "",
    params: GenParams = DEFAULT_PARAMS,
    feedback: str | None = None,
    source_kind: str = "document",
    style: str = "synthesize",
    overlap_chars: int = 0,
    guidance: Guidance = DEFAULT_GUIDANCE,
) -> Reply:
    """Ask the model once for exactly ``count`` pairs grounded in ``source``.

    With ``style="mine"`` (conversations) the pairs are the questions the user
    actually asked, rewritten to stand alone, with the assistant's answers; at most
    ``count`` of them. ``overlap_chars``: how many leading characters of ``source``
    repeat the previous chunk (the chat prompt asks about the text after them).

    Raises LLMTransientError / LLMPermanentError when the request fails; an
    answer that does not parse is *not* an exception (see Reply.parse_error).
    """
    request = pair_request(
        config,
        source=source,
        count=count,
        existing_questions=existing_questions,
        instructions=instructions,
        params=params,
        feedback=feedback,
        source_kind=source_kind,
        style=style,
        overlap_chars=overlap_chars,
        guidance=guidance,
    )
    if config.mode == "completion":
        return _generate_completion(config, request)
    return _generate_chat(config, request)


def build_chat_request(
    config: LLMConfig,
    *,
    source: str,
    count: int,
    existing_questions: Sequence[str] = (),
    instructions: str = "",
    params: GenParams = DEFAULT_PARAMS,
    feedback: str | None = None,
    source_kind: str = "document",
    style: str = "synthesize",
    overlap_chars: int = 0,
    guidance: Guidance = DEFAULT_GUIDANCE,
) -> dict[str, Any]:
    """The Chat Completions request body ``generate_pairs`` would send in chat mode.

    The response format is the strictest one this endpoint and model are known to
    accept (see the negotiation in chat mode).  Used for batch requests.
    """
    request = pair_request(
        config,
        source=source,
        count=count,
        existing_questions=existing_questions,
        instructions=instructions,
        params=params,
        feedback=feedback,
        source_kind=source_kind,
        style=style,
        overlap_chars=overlap_chars,
        guidance=guidance,
    )
    return _chat_body(request, format_level(format_key(config, request.model)))


def pair_request(
    config: LLMConfig,
    *,
    source: str,
    count: int,
    existing_questions: Sequence[str],
    instructions: str,
    params: GenParams,
    feedback: str | None,
    source_kind: str,
    style: str,
    overlap_chars: int = 0,
    guidance: Guidance = DEFAULT_GUIDANCE,
) -> PairRequest:
    """The validated request (ValueError for a bad count, kind or style)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if source_kind not in SOURCE_KINDS:
        raise ValueError(
            f"source_kind must be one of {SOURCE_KINDS}, not {source_kind!r}"
        )
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    return PairRequest(
        source=source,
        style=style,
        count=count,
        existing_questions=tuple(existing_questions),
        # Neutralised too: feedback may quote model output, and neither may
        # open or close a fence.
        instructions=neutralise(instructions.strip()),
        params=params,
        feedback=neutralise((feedback or "").strip()),
        kind=source_kind,
        model=model_for(config, params),
        schema_counts=config.schema_counts,
        # Only a repeat that leaves some of the source its own is worth saying.
        overlap_chars=overlap_chars if 0 < overlap_chars < len(source.rstrip()) else 0,
        guidance=guidance,
    )


# --------------------------------------------------------------------------
# Chat mode
# --------------------------------------------------------------------------

_PAIRS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "answer": {"type": "string"},
                    "evidence": {"type": "string"},
                },
                "required": ["question", "answer", "evidence"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}

# Response-format levels, strictest first; the index of the first level that
# a server accepted is remembered per (base_url, model).
FORMAT_LEVELS = ("json_schema", "json_object", "none")
_format_levels: dict[tuple[str, str], int] = {}
_format_lock = threading.Lock()


def format_level(key: tuple[str, str]) -> int:
    with _format_lock:
        return _format_levels.get(key, 0)


def downgrade_format_level(key: tuple[str, str], failed_level: int) -> int:
    # Only ever move down the list, so racing threads cannot undo a downgrade.
    with _format_lock:
        level = max(_format_levels.get(key, 0), failed_level + 1)
        _format_levels[key] = level
        return level


def _pairs_schema(request: PairRequest) -> dict[str, Any]:
    if not request.schema_counts:
        return _PAIRS_SCHEMA
    # Mining returns the questions the user asked: at most N, possibly fewer.
    counts = {"maxItems": request.count}
    if request.style != "mine":
        counts["minItems"] = request.count
    pairs = {**_PAIRS_SCHEMA["properties"]["pairs"], **counts}
    return {**_PAIRS_SCHEMA, "properties": {"pairs": pairs}}


def _response_format(request: PairRequest, level: int) -> dict[str, Any] | None:
    name = FORMAT_LEVELS[level]
    if name == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "qa_pairs",
                "strict": True,
                "schema": _pairs_schema(request),
            },
        }
    if name == "json_object":
        return {"type": "json_object"}
    return None


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    """Whether the server refused the request's response format (so a weaker one may do).

    400/422 are the usual answers; llama-cpp-python's server raises its validation error
    of a json_schema format as an internal error, a 500 whose body names the format, which
    would otherwise be retried as transient until the model counts as unreachable.
    """
    if exc.status_code not in (400, 422, 500):
        return False
    if getattr(exc, "param", None) == "response_format":
        return True
    text = f"{error_detail(exc)} {exc.message}".lower()
    return any(
        word in text
        for word in ("response_format", "response format", "json_schema", "json_object")
    )


def _chat_body(request: PairRequest, level: int) -> dict[str, Any]:
    """One Chat Completions request body at a response-format level."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": "system", "content": system_message(request)},
            {"role": "user", "content": chat_user_message(request)},
        ],
        # The user's stop sequences as given and uncapped (the forms allow four at most).
        **request_params(request.params, stop_limit=None),
    }
    response_format = _response_format(request, level)
    if response_format is not None:
        body["response_format"] = response_format
    return body


def _generate_chat(config: LLMConfig, request: PairRequest) -> Reply:
    client = client_for(config)
    key = format_key(config, request.model)
    level = format_level(key)
    while True:
        body = _chat_body(request, level)
        try:
            # The SDK's generic POST (its documented way to send a body as is): retries,
            # auth and errors as in `chat.completions.create`, without the type-driven
            # transform of the body and the model parse of the reply, which cost more CPU
            # than the rest of the call (the llm worker's GIL is its bottleneck).
            raw = client.post("/chat/completions", body=body, cast_to=httpx2.Response)
            completion = namespace(raw.json())
        except openai.APIStatusError as exc:
            if "response_format" in body and _rejects_response_format(exc):
                level = downgrade_format_level(key, level)
                continue
            raise map_error(exc, config, request.model) from exc
        except openai.OpenAIError as exc:
            raise map_error(exc, config, request.model) from exc
        except SDK_PARSE_ERRORS as exc:
            raise not_openai(config) from exc
        return replace(chat_reply(completion, config, request.model), headers=_headers(raw))


def chat_reply(completion: Any, config: LLMConfig, model: str) -> Reply:
    """The Reply of a Chat Completions response (live, or a batch output line)."""
    choice = first_choice(completion, config)
    message = getattr(choice, "message", None)
    text = as_text(getattr(message, "content", None))
    refusal = as_text(getattr(message, "refusal", None))
    if not text.strip() and refusal:
        pairs: list[Pair] = []
        error: str | None = f"the model refused: {shorten(refusal)}"
    else:
        pairs, error = parse_json_pairs(text)
    return Reply(
        pairs=pairs,
        finish_reason=finish_reason_of(choice),
        usage=usage_of(getattr(completion, "usage", None)),
        parse_error=error,
        raw_text=text,
        model=as_text(getattr(completion, "model", None)) or model,
    )


# --------------------------------------------------------------------------
# Completion mode
# --------------------------------------------------------------------------


def _generate_completion(config: LLMConfig, request: PairRequest) -> Reply:
    client = client_for(config)
    kwargs = request_params(
        request.params,
        max_tokens=_COMPLETION_TOKENS_BASE + _COMPLETION_TOKENS_PER_PAIR * request.count,
        stops_first=COMPLETION_STOPS,
    )
    try:
        raw = client.completions.with_raw_response.create(
            model=request.model,
            prompt=completion_prompt(request),
            **kwargs,
        )
        completion = raw.parse()
    except openai.OpenAIError as exc:
        raise map_error(exc, config, request.model) from exc
    except SDK_PARSE_ERRORS as exc:
        raise not_openai(config) from exc
    choice = first_choice(completion, config)
    text = as_text(getattr(choice, "text", None))
    finish_reason = finish_reason_of(choice)
    pairs, error = parse_block_pairs(QUESTION_LABEL + text, truncated=finish_reason == "length")
    if not text.strip():
        error = "the model returned no text"
    return Reply(
        pairs=pairs,
        finish_reason=finish_reason,
        usage=usage_of(getattr(completion, "usage", None)),
        parse_error=error,
        raw_text=text,
        model=as_text(getattr(completion, "model", None)) or request.model,
        headers=_headers(raw),
    )


def _headers(raw: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in getattr(raw, "headers", {}).items()}
