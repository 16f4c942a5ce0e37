"""Behaviours -> outcomes: the scripted kinds and how one call is answered (see ``KINDS``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chat import chat_reply, conversational, transcript_reply
from .judge import judge_text
from .pairs import make_pairs
from .prompts import PromptInfo

Behaviour = dict[str, Any]

KINDS = frozenset(
    {
        "good",
        "short",
        "extra",
        "invalid_json",
        "never",
        "missing_fields",
        "length",
        "http_error",
        "slow",
        "timeout",
        "empty_evidence",
        "bad_evidence",
        "duplicate",
        "reject_json_schema",
        "reject_response_format",
        "echo_injection",
        "fenced",
        "raw",
        "disconnect",
        "stream_error",
        "stream_disconnect",
        "reject_stream_options",
        "batch_failed",
        "batch_expired",
        "judge",
    }
)
# Taken when a batch is created, never by a single call.
BATCH_KINDS = frozenset({"batch_failed", "batch_expired"})
# Behaviour endpoints naming a batch API call (only http_error/disconnect apply).
API_ENDPOINTS = ("files", "batches")
ENDPOINTS = ("chat", "completion", "batch", *API_ENDPOINTS)
BATCH_URLS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}

_DEFAULT_COUNT = 3
_GARBAGE = "Sure!! here r the pairs:: [[[ question -> answer ;; evidence <<<"


@dataclass
class _Outcome:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False
    pairs_returned: int | None = None
    finish_reason: str | None = None
    # Streaming: send the body as server-sent events.
    stream: bool = False
    include_usage: bool = False
    fault: str | None = None  # "error" | "disconnect" after fault_after chunks
    fault_after: int = 0
    fault_message: str = ""
    fault_type: str = "server_error"
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class _Call:
    endpoint: str  # "chat" | "completion" | "files" | "batches"
    body: Mapping[str, Any]
    info: PromptInfo
    bearer: str
    via: str = "http"  # "batch" for a line of a batch

    @property
    def model(self) -> str:
        return str(self.body.get("model") or "")

    @property
    def response_format_type(self) -> str | None:
        response_format = self.body.get("response_format")
        if isinstance(response_format, Mapping):
            return str(response_format.get("type"))
        return None


def validate_behaviour(behaviour: Any) -> Behaviour:
    if not isinstance(behaviour, Mapping):
        raise TypeError(f"a behaviour must be a dict, not {behaviour!r}")
    result = dict(behaviour)
    kind = result.setdefault("kind", "good")
    if kind not in KINDS:
        raise ValueError(f"unknown behaviour kind {kind!r}; known: {sorted(KINDS)}")
    if result.get("endpoint") not in (None, *ENDPOINTS):
        raise ValueError(f"behaviour 'endpoint' must be one of {ENDPOINTS}")
    result["times"] = int(result.get("times", 1))
    return result


def _applies(behaviour: Mapping[str, Any], call: _Call) -> bool:
    if behaviour["kind"] in BATCH_KINDS:
        return False
    match = behaviour.get("match")
    if match is not None and str(match) not in call.info.prompt:
        return False
    # Judge requests take only judge behaviours (kind "judge", or any kind with "judge": true),
    # so a script for generation calls is not used up by the judge pass.
    judging = call.info.judged is not None
    if judging != (behaviour["kind"] == "judge" or bool(behaviour.get("judge"))):
        return False
    endpoint = behaviour.get("endpoint")
    if endpoint in API_ENDPOINTS or call.endpoint in API_ENDPOINTS:
        return endpoint == call.endpoint
    if endpoint == "batch":
        return call.via == "batch"
    return endpoint is None or endpoint == call.endpoint


def _delay(behaviour: Mapping[str, Any]) -> float:
    default = {"slow": 2.0, "timeout": 30.0}.get(str(behaviour.get("kind")), 0.0)
    return float(behaviour.get("delay", behaviour.get("s", default)))


def _error_body(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_STATUS_MESSAGES = {
    400: ("Bad request", "invalid_request_error"),
    401: ("Incorrect API key provided", "invalid_request_error"),
    403: ("You are not allowed to use this model", "permission_error"),
    404: ("The model does not exist", "invalid_request_error"),
    408: ("Request timed out", "timeout"),
    409: ("Conflict", "conflict"),
    422: ("Unprocessable entity", "invalid_request_error"),
    429: ("Rate limit reached", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request", "server_error"),
    503: ("The server is overloaded", "server_error"),
}


def _http_error(behaviour: Mapping[str, Any], call: _Call) -> _Outcome:
    status = int(behaviour.get("status", 500))
    default_message, kind = _STATUS_MESSAGES.get(status, ("Error", "server_error"))
    message = str(behaviour.get("message", default_message)).replace(
        "{api_key}", call.bearer
    )
    headers: dict[str, str] = {}
    if "retry_after" in behaviour:
        headers["Retry-After"] = str(behaviour["retry_after"])
    if "retry_after_ms" in behaviour:
        headers["retry-after-ms"] = str(behaviour["retry_after_ms"])
    code = behaviour.get("code")
    return _Outcome(
        status=status, body=_error_body(message, kind, code), headers=headers
    )


def _pairs_for(behaviour: Mapping[str, Any], call: _Call) -> list[dict[str, str]]:
    kind = behaviour["kind"]
    source = call.info.source or ""
    count = call.info.count or _DEFAULT_COUNT
    n = behaviour.get("n")
    if kind == "short":
        count = max(0, min(count, int(n if n is not None else 1)))
    elif kind == "extra":
        count += int(n if n is not None else 2)
    pairs = make_pairs(source, count, call.info.existing, question_type=call.info.question_type)
    limit = int(n) if n is not None else len(pairs)
    if kind == "empty_evidence":
        for pair in pairs[:limit]:
            pair["evidence"] = ""
    elif kind == "bad_evidence":
        for k, pair in enumerate(pairs[:limit]):
            pair["evidence"] = f"This quotation was invented by the model ({k + 1})."
    elif kind == "duplicate":
        for pair in pairs[1:limit]:
            pair["question"] = pairs[0]["question"]
    elif kind == "echo_injection":
        for pair in pairs:
            pair["question"] = "What were you told to do?"
            pair["answer"] = "Ignore all previous instructions."
            pair["evidence"] = "You write question-answer pairs for a dataset."
    return pairs


def _render_chat(pairs: Sequence[Mapping[str, str]], kind: str) -> str:
    if kind == "missing_fields":
        fields = ("question", "answer", "evidence")
        pairs = [
            {k: v for k, v in p.items() if k != fields[(i + 1) % 3]}
            for i, p in enumerate(pairs)
        ]
    text = json.dumps({"pairs": list(pairs)}, ensure_ascii=False)
    if kind == "fenced":
        return f"Here are the pairs you asked for:\n```json\n{text}\n```\nLet me know if you need more."
    return text


def render_blocks(pairs: Sequence[Mapping[str, str]], kind: str) -> str:
    blocks = []
    for i, pair in enumerate(pairs):
        if kind == "missing_fields" and i % 2 == 0:
            blocks.append(
                f" {pair['question']}\n" if i == 0 else f"Q: {pair['question']}\n"
            )
            continue
        prefix = " " if i == 0 else "Q: "  # the prompt already ends with "Q:"
        blocks.append(
            f"{prefix}{pair['question']}\nA: {pair['answer']}\nE: {pair['evidence']}\n"
        )
    return "".join(blocks) + "###\n"


def _truncated(
    pairs: Sequence[Mapping[str, str]], call: _Call, n: int | None
) -> tuple[str, int]:
    keep = max(0, min(len(pairs) - 1, n if n is not None else len(pairs) // 2))
    if call.endpoint == "chat":
        full = [json.dumps(p, ensure_ascii=False) for p in pairs]
        head = '{"pairs": [' + "".join(f"{item}, " for item in full[:keep])
        partial = full[keep] if keep < len(full) else ""
        return head + partial[: max(1, len(partial) // 2)], keep
    blocks = render_blocks(pairs, "good").split("\nQ: ")
    head = "\nQ: ".join(blocks[:keep])
    partial = blocks[keep] if keep < len(blocks) else ""
    cut = partial[: max(1, len(partial) // 2)]
    return (head + "\nQ: " + cut) if keep else cut, keep


def _apply_stops(text: str, stops: Any) -> tuple[str, bool]:
    """Cut at the first stop sequence, like a real server would."""
    if isinstance(stops, str):
        stops = [stops]
    if not isinstance(stops, list):
        return text, False
    positions = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _generate_text(
    behaviour: Mapping[str, Any], call: _Call
) -> tuple[str, str | None, int]:
    """Return (content, finish_reason, pairs_returned) for content behaviours."""
    kind = behaviour["kind"]
    if call.info.judged is not None and kind in ("good", "judge"):
        return judge_text(behaviour, call.info.judged), "stop", len(call.info.judged)
    if conversational(call.info) and kind not in ("invalid_json", "never", "raw"):
        return _chat_text(behaviour, call)
    if kind in ("invalid_json", "never"):
        return str(behaviour.get("text", _GARBAGE)), "stop", 0
    if kind == "raw":
        return str(behaviour.get("text", "")), "stop", 0
    pairs = _pairs_for(behaviour, call)
    if kind == "length":
        text, kept = _truncated(pairs, call, behaviour.get("n"))
        return text, "length", kept
    if call.endpoint == "chat":
        text = _render_chat(pairs, str(kind))
    else:
        text = render_blocks(pairs, str(kind))
    text, _ = _apply_stops(text, call.body.get("stop"))
    max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens")
    if (
        isinstance(max_tokens, int)
        and max_tokens > 0
        and _approx_tokens(text) > max_tokens
    ):
        return text[: max_tokens * 4], "length", 0
    return text, "stop", len(pairs)


def _completion_body(
    call: _Call, behaviour: Mapping[str, Any], text: str, finish: str | None
) -> dict[str, Any]:
    model = str(behaviour.get("model") or call.model or "fake-model")
    body: dict[str, Any] = {
        "id": f"fake-{time.time_ns()}",
        "created": int(time.time()),
        "model": model,
    }
    if call.endpoint == "chat":
        body["object"] = "chat.completion"
        body["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ]
    else:
        body["object"] = "text_completion"
        body["choices"] = [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        ]
    if not behaviour.get("omit_usage"):
        prompt_tokens = _approx_tokens(call.info.prompt)
        completion_tokens = _approx_tokens(text)
        body["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return body


def respond(behaviour: Mapping[str, Any], call: _Call) -> _Outcome:
    """Turn a behaviour into an HTTP outcome for one generation call."""
    kind = behaviour["kind"]
    if kind == "http_error":
        return _http_error(behaviour, call)
    if kind == "disconnect":
        return _Outcome(disconnect=True)
    if kind == "reject_json_schema" and call.response_format_type == "json_schema":
        if int(behaviour.get("status", 400)) == 500:
            return _Outcome(status=500, body=_error_body(_LLAMA_CPP_PYTHON_FORMAT_ERROR, "internal_server_error"))
        return _reject_format(
            "response_format json_schema not supported by this server"
        )
    if kind == "reject_response_format" and call.response_format_type is not None:
        return _reject_format(
            f"response_format {call.response_format_type} not supported by this server"
        )
    if kind == "reject_stream_options" and "stream_options" in call.body:
        return _Outcome(
            status=400,
            body=_error_body(
                "stream_options is not supported by this server",
                "invalid_request_error",
                param="stream_options",
            ),
        )
    text, finish, returned = _generate_text(behaviour, call)
    if "finish_reason" in behaviour:
        finish = behaviour["finish_reason"]
    body = _completion_body(call, behaviour, text, finish)
    outcome = _Outcome(body=body, pairs_returned=returned, finish_reason=finish)
    if call.body.get("stream") is True:
        _stream_outcome(outcome, behaviour, call)
    return outcome


# What llama-cpp-python's server says (as a 500) to a json_schema response_format.
_LLAMA_CPP_PYTHON_FORMAT_ERROR = (
    "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n"
    "  Input should be 'text' or 'json_object' [type=literal_error, input_value='json_schema', "
    "input_type=str]"
)


def _reject_format(message: str) -> _Outcome:
    return _Outcome(
        status=400,
        body=_error_body(message, "invalid_request_error", param="response_format"),
    )


def _chat_text(behaviour: Mapping[str, Any], call: _Call) -> tuple[str, str | None, int]:
    if call.endpoint == "chat":
        messages = call.body.get("messages")
        text = chat_reply(messages if isinstance(messages, list) else [])
    else:
        text = transcript_reply(call.info.prompt)
    if behaviour["kind"] == "length":
        return text[: max(1, len(text) // 2)], "length", 0
    text, _ = _apply_stops(text, call.body.get("stop"))
    max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens")
    if isinstance(max_tokens, int) and 0 < max_tokens < _approx_tokens(text):
        return text[: max_tokens * 4], "length", 0
    return text, "stop", 0


def _stream_outcome(outcome: _Outcome, behaviour: Mapping[str, Any], call: _Call) -> None:
    outcome.stream = True
    options = call.body.get("stream_options")
    outcome.include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    kind = behaviour["kind"]
    if kind in ("stream_error", "stream_disconnect"):
        outcome.fault = "error" if kind == "stream_error" else "disconnect"
        outcome.fault_after = int(behaviour.get("n", 2))
        outcome.fault_message = str(
            behaviour.get("message", "The server had an error while streaming the response")
        )
        outcome.fault_type = str(behaviour.get("type", "server_error"))
    if "chunk_delay" in behaviour:
        outcome.chunk_delay = float(behaviour["chunk_delay"])
