"""A scriptable fake OpenAI-compatible model server for tests and benchmarks.

It understands the prompt conventions of ``masscer.lib.llm`` (the ``<source>``
fence, ``Number of pairs: N`` and ``<existing_questions>``) and by default
answers with exactly N well-formed pairs whose evidence is copied verbatim
from the source and whose questions are mutually distinct.  Faults are
scripted as small behaviour dicts, consumed in order (see ``KINDS``).

In-process::

    with FakeLLMServer(latency=0.01) as server:
        server.script([{"kind": "http_error", "status": 429, "retry_after": 3}])
        config = LLMConfig(base_url=server.base_url, api_key="k", model="fake")

Other processes (Celery workers, benchmarks)::

    python -m masscer.testing.fakellm --port 8765 --latency 0.5 --capacity 64

and drive it over HTTP with :class:`FakeLLMClient` (POST /_fake/script,
POST /_fake/default, POST /_fake/settings, POST /_fake/reset,
GET /_fake/calls, GET /_fake/state).

Behaviours are consumed in order: a call takes the first scripted behaviour
whose ``match``/``endpoint`` apply; when none applies, the first applicable
default (``set_default``) is used, else "good".  Kinds:

* ``good`` — exactly N grounded pairs (N from ``Number of pairs: N``, 3 if absent);
* ``short`` — only ``n`` pairs (default 1); ``extra`` — N + ``n`` (default 2);
* ``invalid_json`` / ``never`` — garbage text (``text`` overrides); use
  ``never`` with set_default for "the model never delivers";
* ``missing_fields`` — N pairs, some lacking question/answer/evidence;
* ``length`` — ``n`` complete pairs (default N//2) then a cut-off one,
  finish_reason "length";
* ``http_error`` — ``status`` (default 500) with OpenAI-style error body;
  ``retry_after`` (Retry-After header value: seconds or HTTP date),
  ``retry_after_ms``, ``message`` (``{api_key}`` is replaced by the bearer
  token, as some real servers echo it), ``code`` (e.g. "insufficient_quota");
* ``slow`` / ``timeout`` — sleep ``s`` seconds (default 2 / 30) then answer good;
* ``empty_evidence`` / ``bad_evidence`` — the first ``n`` (default all) pairs
  get an empty / invented evidence quote;
* ``duplicate`` — the first ``n`` (default all) pairs share one question;
* ``reject_json_schema`` — 400 "response_format json_schema not supported"
  when the request uses a json_schema response_format, good otherwise; with
  ``status`` 500, the internal error llama-cpp-python's server answers (its
  validation error of the format, with no ``param``);
  ``reject_response_format`` — the same for any response_format;
* ``echo_injection`` — pairs that obey an injected instruction (evidence not
  in the source);
* ``fenced`` — chat JSON wrapped in prose and a ```json fence;
* ``raw`` — content exactly ``text``;
* ``disconnect`` — close the connection without answering.

Keys any behaviour may carry: ``match`` (substring the prompt must contain),
``endpoint`` ("chat" | "completion"), ``times`` (calls it serves before being
consumed, default 1), ``delay`` (extra seconds before answering),
``finish_reason`` (override, null allowed), ``model`` (name to report),
``omit_usage`` (leave usage out).

Chat without the generation conventions (no ``<source>`` fence and no
``Number of pairs`` line, e.g. the agent playground): content behaviours answer
like a chat model with a deterministic reply (see :func:`chat_reply`) that
names the reference questions it saw (``Q:`` lines between
``<reference_examples>`` tags), the last user message and the number of
messages.  ``length`` cuts that reply in half; ``raw``/``invalid_json``/``never``
send their text.

Streaming: with ``"stream": true`` every successful answer (chat or
completion, pairs or chat reply) is sent as real server-sent events in
OpenAI's chunk format, one word per chunk, then ``data: [DONE]``; with
``stream_options.include_usage`` a last chunk carries the usage.  Extra kinds:
``stream_error`` (``n`` chunks, default 2, then an error event; ``message``,
``type``), ``stream_disconnect`` (``n`` chunks, then the connection closes
mid-stream), ``reject_stream_options`` (400 when the request has
``stream_options``, good otherwise).  ``chunk_delay`` (a behaviour key or a
server setting) sleeps between chunks.  Requests to ``/embeddings`` (hashed
bag-of-words vectors, see :func:`embed`) are listed in ``embedding_calls``.

Batch API: ``POST /files`` (multipart upload with ``purpose``), ``GET
/files/{id}`` and ``GET /files/{id}/content``; ``POST /batches``, ``GET
/batches/{id}`` and ``POST /batches/{id}/cancel``.  Creating a batch validates
the JSONL (custom_id unique, method POST, url = the batch endpoint, a body, one
model); a valid batch is ``in_progress`` until ``batch_delay`` seconds have
passed, then the next retrieval runs every line through the same behaviours as
live calls (logged with endpoint "batch", ``custom_id`` and ``batch_id``) and
the batch is ``completed``, with an output file and, for lines answered with an
HTTP error, an error file, in OpenAI's batch output format.  Behaviour
``endpoint`` may also be "batch" (batch lines only; "chat" applies to both),
or "files" / "batches" for ``http_error``/``disconnect`` on those API calls.
Batch-level kinds, taken when a batch is created: ``batch_failed`` (validation
fails with ``message``/``code``) and ``batch_expired`` (only the first ``n``
lines, default 0, are answered; the rest get ``batch_expired`` errors).
Uploaded files and batches are listed by :meth:`FakeLLMServer.batches` and
``GET /_fake/state``; other API requests in ``api_calls``.

Server settings: ``latency`` (seconds added to every generation call),
``capacity`` (max in-flight generation calls; beyond it 429 with
Retry-After: 1), ``rpm`` (sliding 60 s window; 429 with Retry-After),
``batch_delay`` (seconds a batch stays in progress; latency, capacity and rpm
do not apply to batch lines).  Real
stop sequences and ``max_tokens`` (≈ 4 characters per token) are honoured.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import enum
import hashlib
import json
import math
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Self

__all__ = [
    "KINDS",
    "chat_reply",
    "conversational",
    "reference_questions",
    "stream_chunks",
    "transcript_reply",
    "FakeLLMClient",
    "FakeLLMServer",
    "make_pairs",
    "read_prompt",
    "render_blocks",
    "source_hash",
]

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

_SOURCE_BLOCK = re.compile(r"<source>\n(.*?)\n</source>", re.DOTALL)
_EXISTING_BLOCK = re.compile(
    r"<existing_questions>\n(.*?)\n?</existing_questions>", re.DOTALL
)
_COUNT_LINE = re.compile(r"^Number of pairs:\s*(\d+)\s*$", re.MULTILINE)


# --------------------------------------------------------------------------
# Prompt reading
# --------------------------------------------------------------------------


def source_hash(text: str) -> str:
    """Hash used in the call log: sha256 of the stripped source text."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptInfo:
    prompt: str
    source: str | None
    count: int | None
    existing: tuple[str, ...]


def read_prompt(prompt: str) -> PromptInfo:
    """Extract the real (last) source, count and existing questions."""
    sources = _SOURCE_BLOCK.findall(prompt)
    # Count and existing questions are searched outside source text so that a
    # document quoting "Number of pairs: 9" cannot steer the fake.
    outside = _SOURCE_BLOCK.sub("", prompt)
    counts = _COUNT_LINE.findall(outside)
    existing_blocks = _EXISTING_BLOCK.findall(outside)
    existing: tuple[str, ...] = ()
    if existing_blocks:
        lines = (
            line.strip().removeprefix("- ").strip()
            for line in existing_blocks[-1].splitlines()
        )
        existing = tuple(line for line in lines if line)
    return PromptInfo(
        prompt=prompt,
        source=sources[-1] if sources else None,
        count=int(counts[-1]) if counts else None,
        existing=existing,
    )


def _chat_prompt(body: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(p.get("text", "")) for p in content if isinstance(p, Mapping)
            )
    return "\n".join(parts)


def _completion_prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt else ""
    return prompt if isinstance(prompt, str) else ""


# --------------------------------------------------------------------------
# Pair generation
# --------------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_STOPWORD_TEXT = """
a an and are as at be been but by can could did do does for from had has have he
her his how i if in into is it its me my no not of on or our she so than that
the their them then there these they this to was we were what when where which
who why will with would you your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TEMPLATES = (
    "What does the text say about «{w}»?",
    "Which detail is given regarding «{w}»?",
    "How is «{w}» described in the passage?",
    "What is stated concerning «{w}»?",
    "According to the source, what is meant by «{w}»?",
    "Why does the material mention «{w}»?",
    "What can be learned from «{w}»?",
    "Which fact relates to «{w}»?",
    "In what context does «{w}» appear?",
    "What information accompanies «{w}»?",
)
_MAX_WINDOW_WORDS = 6
_WINDOW_CONTENT_WORDS = 2
_MAX_EVIDENCE_WORDS = 24
_MAX_ANSWER_WORDS = 12
# Stricter than the caller's 0.8 so generated questions never look alike.
_MAX_SIMILARITY = 0.7
_MAX_CONTENT_SIMILARITY = 0.5


@dataclass(frozen=True)
class _Word:
    text: str
    start: int
    end: int
    sentence: int


def _words(source: str) -> list[_Word]:
    words: list[_Word] = []
    sentence = 0
    previous_end = 0
    for match in _WORD.finditer(source):
        # A line break also ends a "sentence" so evidence never spans lines
        # (completion-mode E: lines are single lines).  splitlines() knows
        # every break character the parser in llm.py will split on.
        gap = source[previous_end : match.start()]
        if words and len(f"x{gap}x".splitlines()) > 1:
            sentence += 1
        words.append(_Word(match.group(), match.start(), match.end(), sentence))
        if _SENTENCE_END.search(match.group()):
            sentence += 1
        previous_end = match.end()
    return words


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in _TOKEN.findall(text)}


def _content(tokens: set[str]) -> set[str]:
    return {t for t in tokens if t not in _STOPWORDS and (len(t) >= 3 or t.isdigit())}


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _windows(words: Sequence[_Word]) -> list[tuple[int, int]]:
    """Candidate (start, end) word windows: non-overlapping passes at offsets."""
    found: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for offset in (0, 2, 1, 3):
        i = offset
        while i < len(words):
            j = i
            content = 0
            while (
                j < len(words)
                and j - i < _MAX_WINDOW_WORDS
                and words[j].sentence == words[i].sentence
            ):
                content += bool(_content(_tokens(words[j].text)))
                j += 1
                if content >= _WINDOW_CONTENT_WORDS:
                    break
            if content and (i, j) not in seen:
                seen.add((i, j))
                found.append((i, j))
            i = max(j, i + 1)
    return found


def _span(source: str, words: Sequence[_Word], first: int, last: int) -> str:
    return source[words[first].start : words[last].end]


def _evidence(source: str, words: Sequence[_Word], start: int, end: int) -> str:
    sentence = words[start].sentence
    lo = start
    while lo > 0 and words[lo - 1].sentence == sentence and start - lo < 6:
        lo -= 1
    hi = end - 1
    while (
        hi + 1 < len(words)
        and words[hi + 1].sentence == sentence
        and hi - lo < _MAX_EVIDENCE_WORDS - 1
    ):
        hi += 1
    return _span(source, words, lo, hi)


def _answer(source: str, words: Sequence[_Word], start: int) -> str:
    sentence = words[start].sentence
    hi = start
    while (
        hi + 1 < len(words)
        and words[hi + 1].sentence == sentence
        and hi - start < _MAX_ANSWER_WORDS - 1
    ):
        hi += 1
    return "The text says: " + " ".join(w.text for w in words[start : hi + 1])


_WINDOW_QUOTE = re.compile(r"«(.*?)»")


def _window_tokens(question: str) -> set[str]:
    """Content tokens of the quoted window (whole question when unquoted)."""
    quoted = _WINDOW_QUOTE.findall(question)
    return _content(_tokens(" ".join(quoted) if quoted else question))


@dataclass(frozen=True)
class _Taken:
    tokens: set[str]
    window: set[str]

    @classmethod
    def of(cls, question: str) -> _Taken:
        return cls(tokens=_tokens(question), window=_window_tokens(question))


def _distinct(question: str, taken: Sequence[_Taken]) -> bool:
    # Compare whole questions (what the caller's near-duplicate filter sees)
    # and the quoted windows, so a window is never reused with a new template.
    candidate = _Taken.of(question)
    return all(
        _jaccard(candidate.tokens, t.tokens) < _MAX_SIMILARITY
        and _jaccard(candidate.window, t.window) < _MAX_CONTENT_SIMILARITY
        for t in taken
    )


def make_pairs(
    source: str, count: int, existing: Sequence[str] = ()
) -> list[dict[str, str]]:
    """``count`` pairs grounded in ``source``: verbatim evidence, distinct questions.

    Questions avoid anything similar to ``existing``.  When the source is too
    small for enough distinct questions, the rest are numbered variants (which
    a near-duplicate filter may legitimately reject).
    """
    words = _words(source)
    if not words:
        return [
            {
                "question": f"What is question {k + 1} about?",
                "answer": "Nothing.",
                "evidence": "",
            }
            for k in range(count)
        ]
    taken = [_Taken.of(q) for q in existing]
    pairs: list[dict[str, str]] = []
    windows = _windows(words)
    for start, end in windows:
        if len(pairs) >= count:
            break
        window = " ".join(w.text for w in words[start:end])
        question = _TEMPLATES[len(pairs) % len(_TEMPLATES)].format(w=window)
        if not _distinct(question, taken):
            continue
        taken.append(_Taken.of(question))
        pairs.append(_pair(source, words, start, end, question))
    extra = 0
    while len(pairs) < count:
        start, end = windows[extra % len(windows)] if windows else (0, 1)
        window = " ".join(w.text for w in words[start:end])
        question = f"Question {len(pairs) + 1}: what else is said about «{window}»?"
        pairs.append(_pair(source, words, start, end, question))
        extra += 1
    return pairs


def _pair(
    source: str, words: Sequence[_Word], start: int, end: int, question: str
) -> dict[str, str]:
    return {
        "question": question,
        "answer": _answer(source, words, start),
        "evidence": _evidence(source, words, start, end),
    }


# --------------------------------------------------------------------------
# Behaviours -> outcomes
# --------------------------------------------------------------------------


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
    pairs = make_pairs(source, count, call.info.existing)
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


# --------------------------------------------------------------------------
# Chat replies (no generation conventions) and streaming
# --------------------------------------------------------------------------

_REFERENCE_BLOCK = re.compile(
    r"<reference_examples>\n(.*?)\n?</reference_examples>", re.DOTALL
)
_TRANSCRIPT_USER = re.compile(r"^User:[ \t]?(.*)$", re.MULTILINE)
_FIRST_SPACE = re.compile(r"\s*")
_PIECE = re.compile(r"\S+\s*")


def conversational(info: PromptInfo) -> bool:
    """A chat without the generation conventions (no source, no pair count)."""
    return info.source is None and info.count is None


def reference_questions(prompt: str) -> list[str]:
    """The ``Q:`` lines between ``<reference_examples>`` tags, in order."""
    questions: list[str] = []
    for block in _REFERENCE_BLOCK.findall(prompt):
        for line in block.splitlines():
            if line.startswith("Q:"):
                questions.append(line[2:].strip())
    return questions


def _reply_text(prompt: str, last_user: str, user_turns: int) -> str:
    questions = reference_questions(prompt)
    said = " ".join(last_user.split())
    if len(said) > 120:
        said = said[:119] + "…"
    if questions:
        listed = " | ".join(f"«{q}»" for q in questions)
        seen = f"I was given {len(questions)} reference example(s): {listed}."
    else:
        seen = "I was given no reference examples."
    return (
        f"This is the fake model answering “{said}” (user turn {user_turns}). "
        f"{seen} Thank you for trying the playground."
    )


def chat_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    """The fake's answer to a Chat Completions request without generation conventions."""
    users = [
        str(m.get("content") or "")
        for m in messages
        if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    prompt = _chat_prompt({"messages": list(messages)})
    return _reply_text(prompt, users[-1] if users else "", len(users))


def transcript_reply(prompt: str) -> str:
    """The fake's answer to a ``User:``/``Assistant:`` transcript (completion mode)."""
    users = _TRANSCRIPT_USER.findall(prompt)
    return _reply_text(prompt, users[-1] if users else "", len(users))


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


def _pieces(text: str) -> list[str]:
    """One piece per word (with its trailing space); joined they give ``text``."""
    lead = _FIRST_SPACE.match(text)
    head = lead.group() if lead else ""
    pieces = _PIECE.findall(text[len(head) :])
    if pieces:
        pieces[0] = head + pieces[0]
    elif head:
        pieces = [head]
    return pieces


def stream_chunks(outcome_body: Mapping[str, Any], *, include_usage: bool) -> list[tuple[str, Any]]:
    """The SSE payloads for a (non-streaming) body: ("content" | "final" | "usage" | "done", payload)."""
    chat = outcome_body.get("object") == "chat.completion"
    choice = outcome_body["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    base = {
        "id": outcome_body["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": outcome_body["created"],
        "model": outcome_body["model"],
    }
    if include_usage:
        base["usage"] = None

    def chunk(content: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            item = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            item = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [item]}

    events: list[tuple[str, Any]] = []
    if chat:
        events.append(("content", chunk("", None, role=True)))
    events.extend(("content", chunk(piece, None)) for piece in _pieces(text))
    events.append(("final", chunk(None if chat else "", choice["finish_reason"])))
    if include_usage and "usage" in outcome_body:
        events.append(("usage", {**base, "choices": [], "usage": outcome_body["usage"]}))
    events.append(("done", "[DONE]"))
    return events


def _send_stream(handler: _Handler, outcome: _Outcome) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    for name, value in outcome.headers.items():
        handler.send_header(name, value)
    handler.end_headers()

    def write(data: bytes) -> None:
        handler.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    sent = 0
    for kind, payload in stream_chunks(outcome.body or {}, include_usage=outcome.include_usage):
        if outcome.fault and kind in ("content", "final") and sent >= outcome.fault_after:
            if outcome.fault == "disconnect":
                _send_outcome(handler, _Outcome(disconnect=True))
                return
            error = _error_body(outcome.fault_message, outcome.fault_type)
            write(b"data: " + json.dumps(error).encode("utf-8") + b"\n\n")
            break
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        write(b"data: " + data.encode("utf-8") + b"\n\n")
        if kind == "content":
            sent += 1
            if outcome.chunk_delay > 0:
                time.sleep(outcome.chunk_delay)
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


# --------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------


def embed(text: str, dimensions: int = 64) -> list[float]:
    """Deterministic hashed bag-of-words vector, L2-normalised."""
    vector = [0.0] * dimensions
    for token in _TOKEN.findall(text.lower()):
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        index = int.from_bytes(digest[:4], "big") % dimensions
        vector[index] += 1.0 if digest[4] % 2 == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5
    # would turn bursts into connection errors.
    request_queue_size = 512
    fake: FakeLLMServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._dispatch(self, "POST")

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (~40 ms per call), as no real server does.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        # Silence per-request logging; the call log is the record.
        return


class _Keep(enum.Enum):
    """Sentinel for configure(): leave this setting unchanged."""

    KEEP = "keep"


KEEP = _Keep.KEEP


@dataclass
class _Settings:
    latency: float = 0.0
    capacity: int | None = None
    rpm: int | None = None
    chunk_delay: float = 0.0
    batch_delay: float = 0.0


class FakeLLMServer:
    """Fake OpenAI-compatible server on 127.0.0.1 running in a daemon thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        capacity: int | None = None,
        rpm: int | None = None,
        models: Sequence[str] = ("fake-model",),
        strict_models: bool = False,
        chunk_delay: float = 0.0,
        batch_delay: float = 0.0,
    ) -> None:
        self._settings = _Settings(
            latency=latency,
            capacity=capacity,
            rpm=rpm,
            chunk_delay=chunk_delay,
            batch_delay=batch_delay,
        )
        self.models = tuple(models)
        self.strict_models = strict_models
        self._lock = threading.Lock()
        self._script: list[Behaviour] = []
        self._defaults: list[Behaviour] = []
        self._calls: list[dict[str, Any]] = []
        self._embedding_calls: list[dict[str, Any]] = []
        self._api_calls: list[dict[str, Any]] = []
        self._files: dict[str, _StoredFile] = {}
        self._batches: dict[str, _Batch] = {}
        self._recent: deque[float] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                # A short poll keeps stop() (and test teardown) fast.
                kwargs={"poll_interval": 0.05},
                name="fakellm",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        # Keep-alive connections would otherwise keep being served.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- scripting -------------------------------------------------------

    def script(
        self, behaviours: Sequence[Mapping[str, Any]], *, append: bool = False
    ) -> None:
        """Queue behaviours consumed in order (replacing the queue unless append)."""
        validated = [validate_behaviour(b) for b in behaviours]
        with self._lock:
            if not append:
                self._script.clear()
            self._script.extend(validated)

    def set_default(
        self, behaviour: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    ) -> None:
        """Behaviour(s) used when the script has nothing applicable; the first
        default whose match/endpoint applies wins, otherwise "good"."""
        if behaviour is None:
            defaults: list[Behaviour] = []
        elif isinstance(behaviour, Mapping):
            defaults = [validate_behaviour(behaviour)]
        else:
            defaults = [validate_behaviour(b) for b in behaviour]
        with self._lock:
            self._defaults = defaults

    def configure(
        self,
        *,
        latency: float | None = None,
        capacity: int | None | _Keep = KEEP,
        rpm: int | None | _Keep = KEEP,
        chunk_delay: float | None = None,
        batch_delay: float | None = None,
    ) -> None:
        """Change settings; pass capacity=None / rpm=None to remove a limit."""
        with self._lock:
            if latency is not None:
                self._settings.latency = float(latency)
            if batch_delay is not None:
                self._settings.batch_delay = float(batch_delay)
            if chunk_delay is not None:
                self._settings.chunk_delay = float(chunk_delay)
            if not isinstance(capacity, _Keep):
                self._settings.capacity = None if capacity is None else int(capacity)
            if not isinstance(rpm, _Keep):
                self._settings.rpm = None if rpm is None else int(rpm)

    def reset(self) -> None:
        """Clear script, defaults, call log and rate-limit window."""
        with self._lock:
            self._script.clear()
            self._defaults.clear()
            self._calls.clear()
            self._embedding_calls.clear()
            self._api_calls.clear()
            self._files.clear()
            self._batches.clear()
            self._recent.clear()
            self._max_in_flight = self._in_flight

    def pending(self) -> list[Behaviour]:
        with self._lock:
            return [dict(b) for b in self._script]

    # -- call log --------------------------------------------------------

    @property
    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls]

    def _calls_query(self, raw_path: str) -> list[dict[str, Any]]:
        """GET /_fake/calls?since=ID&brief=1: newer calls only / without the
        bulky request and prompt (for benchmarks polling a long log)."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
        since = int(query.get("since", ["0"])[0])
        brief = query.get("brief", ["0"])[0] not in ("0", "", "false")
        calls = [c for c in self.calls if c["id"] > since]
        if brief:
            for call in calls:
                call.pop("request", None)
                call.pop("prompt", None)
        return calls

    @property
    def embedding_calls(self) -> list[dict[str, Any]]:
        """Requests to /embeddings ({"model", "input"}), kept apart from the generation log."""
        with self._lock:
            return [dict(c) for c in self._embedding_calls]

    def calls_for(self, substring: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if substring in (c.get("prompt") or "")]

    def counts_by_source(self) -> dict[str, int]:
        counter = Counter(c["source_hash"] for c in self.calls if c.get("source_hash"))
        return dict(counter)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def state(self) -> dict[str, Any]:
        with self._lock:
            settings = {
                "latency": self._settings.latency,
                "capacity": self._settings.capacity,
                "rpm": self._settings.rpm,
            }
            return {
                "base_url": self.base_url,
                "settings": settings,
                "script": [dict(b) for b in self._script],
                "defaults": [dict(b) for b in self._defaults],
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "calls": len(self._calls),
                "batch_delay": self._settings.batch_delay,
                "files": len(self._files),
                "batches": {b.info["id"]: b.info["status"] for b in self._batches.values()},
                "counts_by_source": dict(
                    Counter(c["source_hash"] for c in self._calls if c["source_hash"])
                ),
            }

    # -- request handling ------------------------------------------------

    def _dispatch(self, handler: _Handler, method: str) -> None:
        path = urllib.parse.urlsplit(handler.path).path.rstrip("/")
        body, error = _read_body(handler)
        if path.startswith("/v1/"):
            path = path[3:]
        try:
            if error is not None:
                _send_json(handler, 400, _error_body(error, "invalid_request_error"))
            elif path.startswith("/_fake/"):
                self._control(handler, method, path, body)
            elif method == "GET" and path == "/models":
                _send_json(handler, 200, self._models_body())
            elif method == "GET" and path.startswith("/models/"):
                self._retrieve_model(handler, path.removeprefix("/models/"))
            elif method == "POST" and path == "/chat/completions":
                self._generate(handler, "chat", body)
            elif method == "POST" and path == "/completions":
                self._generate(handler, "completion", body)
            elif method == "POST" and path == "/embeddings":
                self._embeddings(handler, body)
            elif path == "/files" or path.startswith("/files/"):
                self._files_api(handler, method, path, body)
            elif path == "/batches" or path.startswith("/batches/"):
                self._batches_api(handler, method, path, body)
            else:
                _send_json(
                    handler,
                    404,
                    _error_body(f"Unknown path {method} {handler.path}", "not_found"),
                )
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired); nothing to answer.
            handler.close_connection = True

    def _control(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        try:
            if method == "POST" and path == "/_fake/script":
                behaviours = (
                    body.get("behaviours", []) if isinstance(body, Mapping) else body
                )
                append = (
                    bool(body.get("append", False))
                    if isinstance(body, Mapping)
                    else False
                )
                self.script(behaviours or [], append=append)
            elif method == "POST" and path == "/_fake/default":
                default = (
                    body.get("default", body)
                    if isinstance(body, Mapping) and "default" in body
                    else body
                )
                self.set_default(default)
            elif method == "POST" and path == "/_fake/settings":
                settings = dict(body or {})
                self.configure(
                    latency=settings.get("latency"),
                    capacity=settings.get("capacity", KEEP),
                    rpm=settings.get("rpm", KEEP),
                    chunk_delay=settings.get("chunk_delay"),
                    batch_delay=settings.get("batch_delay"),
                )
            elif method == "POST" and path == "/_fake/reset":
                self.reset()
            elif method == "GET" and path == "/_fake/calls":
                _send_json(handler, 200, self._calls_query(handler.path))
                return
            elif method == "GET" and path == "/_fake/state":
                _send_json(handler, 200, self.state())
                return
            else:
                _send_json(
                    handler,
                    404,
                    _error_body(f"Unknown control path {path}", "not_found"),
                )
                return
        except (TypeError, ValueError) as exc:
            _send_json(handler, 400, _error_body(str(exc), "invalid_request_error"))
            return
        _send_json(handler, 200, {"ok": True, "state": self.state()})

    def _models_body(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fakellm"}
            for m in self.models
        ]
        return {"object": "list", "data": data}

    def _retrieve_model(self, handler: _Handler, model: str) -> None:
        if model in self.models:
            _send_json(
                handler,
                200,
                {"id": model, "object": "model", "created": 0, "owned_by": "fakellm"},
            )
        else:
            _send_json(handler, 404, _model_not_found(model))

    def _embeddings(self, handler: _Handler, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
        dimensions = int(body.get("dimensions") or 64)
        data = [
            {"object": "embedding", "index": i, "embedding": embed(text, dimensions)}
            for i, text in enumerate(texts)
        ]
        tokens = sum(_approx_tokens(t) for t in texts)
        with self._lock:
            self._embedding_calls.append({"model": body.get("model"), "input": texts})
        _send_json(
            handler,
            200,
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _generate(self, handler: _Handler, endpoint: str, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        prompt = _chat_prompt(body) if endpoint == "chat" else _completion_prompt(body)
        call = _Call(
            endpoint=endpoint,
            body=body,
            info=read_prompt(prompt),
            bearer=_bearer(handler),
        )
        record = self._record_start(call)
        rejection = self._admit()
        if rejection is not None:
            self._record_end(record, rejection)
            _send_outcome(handler, rejection)
            return
        try:
            behaviour = self._next_behaviour(call)
            with self._lock:
                record["behaviour"] = behaviour["kind"]
                latency = self._settings.latency
                chunk_delay = self._settings.chunk_delay
            time.sleep(latency + _delay(behaviour))
            if self.strict_models and call.model not in self.models:
                outcome = _Outcome(status=404, body=_model_not_found(call.model))
            else:
                outcome = respond(behaviour, call)
                if "chunk_delay" not in behaviour:
                    outcome.chunk_delay = chunk_delay
            self._record_end(record, outcome)
            _send_outcome(handler, outcome)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _admit(self) -> _Outcome | None:
        """Take an in-flight slot, or return the 429 outcome for capacity/rpm."""
        now = time.monotonic()
        with self._lock:
            settings = self._settings
            if settings.capacity is not None and self._in_flight >= settings.capacity:
                return _rate_limited(
                    "Server at capacity; too many concurrent requests", 1.0, "capacity"
                )
            if settings.rpm is not None:
                while self._recent and now - self._recent[0] >= 60.0:
                    self._recent.popleft()
                if len(self._recent) >= settings.rpm:
                    wait = max(1.0, 60.0 - (now - self._recent[0]))
                    return _rate_limited(
                        f"Rate limit of {settings.rpm} requests per minute reached",
                        wait,
                        "rpm",
                    )
                self._recent.append(now)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return None

    def _next_behaviour(self, call: _Call) -> Behaviour:
        with self._lock:
            for index, behaviour in enumerate(self._script):
                if _applies(behaviour, call):
                    behaviour["times"] -= 1
                    if behaviour["times"] <= 0:
                        del self._script[index]
                    return dict(behaviour)
            for behaviour in self._defaults:
                if _applies(behaviour, call):
                    return dict(behaviour)
        return {"kind": "good", "times": 1}

    def _record_start(self, call: _Call) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": 0,
            "started": time.time(),
            "ended": None,
            "endpoint": "batch" if call.via == "batch" else call.endpoint,
            "model": call.model,
            # The key the client sent (tests check it is used, yet shown and logged nowhere).
            "bearer": call.bearer,
            "request": dict(call.body),
            "prompt": call.info.prompt,
            "response_format": call.response_format_type,
            "source_hash": source_hash(call.info.source)
            if call.info.source is not None
            else None,
            "requested_count": call.info.count,
            "existing_questions": len(call.info.existing),
            "behaviour": None,
            "status": None,
            "rejected": None,
            "pairs_returned": None,
            "finish_reason": None,
            "stream": call.body.get("stream") is True,
        }
        with self._lock:
            record["id"] = len(self._calls) + 1
            self._calls.append(record)
        return record

    def _record_end(self, record: dict[str, Any], outcome: _Outcome) -> None:
        with self._lock:
            record["ended"] = time.time()
            record["status"] = 0 if outcome.disconnect else outcome.status
            record["rejected"] = outcome.headers.get("x-fake-rejected")
            record["pairs_returned"] = outcome.pairs_returned
            record["finish_reason"] = outcome.finish_reason

    # -- files and batches -----------------------------------------------

    @property
    def api_calls(self) -> list[dict[str, Any]]:
        """Requests to /files and /batches ({"method", "path", "status"})."""
        with self._lock:
            return [dict(c) for c in self._api_calls]

    def batches(self) -> list[dict[str, Any]]:
        """The batch objects as a retrieval would show them (without processing)."""
        with self._lock:
            return [json.loads(json.dumps(b.info)) for b in self._batches.values()]

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id].data

    def _api_fault(self, handler: _Handler, endpoint: str, method: str, path: str) -> bool:
        """Answer with a scripted http_error/disconnect for a files/batches call."""
        call = _Call(endpoint=endpoint, body={}, info=read_prompt(""), bearer=_bearer(handler))
        behaviour = self._next_behaviour(call)
        outcome: _Outcome | None = None
        if behaviour["kind"] == "http_error":
            outcome = _http_error(behaviour, call)
        elif behaviour["kind"] == "disconnect":
            outcome = _Outcome(disconnect=True)
        with self._lock:
            self._api_calls.append(
                {"method": method, "path": path, "status": outcome.status if outcome else 200}
            )
        if outcome is None:
            return False
        _send_outcome(handler, outcome)
        return True

    def _files_api(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        if self._api_fault(handler, "files", method, path):
            return
        parts = path.split("/")[2:]  # "/files/ID/content" -> ["ID", "content"]
        if method == "POST" and not parts:
            self._upload(handler, body)
            return
        with self._lock:
            stored = self._files.get(parts[0]) if parts else None
        if method != "GET" or stored is None or len(parts) > 2 or parts[1:] not in ([], ["content"]):
            _send_json(handler, 404, _error_body(f"No such File object: {path}", "invalid_request_error"))
        elif parts[1:] == ["content"]:
            _send_bytes(handler, stored.data, "application/octet-stream")
        else:
            _send_json(handler, 200, stored.object())

    def _upload(self, handler: _Handler, body: Any) -> None:
        fields = body if isinstance(body, _Multipart) else None
        if fields is None or "file" not in fields.parts or "purpose" not in fields.parts:
            _send_json(
                handler,
                400,
                _error_body("Upload a multipart form with 'file' and 'purpose'", "invalid_request_error"),
            )
            return
        filename, data = fields.parts["file"]
        purpose = fields.parts["purpose"][1].decode("utf-8", errors="replace")
        stored = self._store_file(filename or "upload.jsonl", purpose, data)
        _send_json(handler, 200, stored.object())

    def _store_file(self, filename: str, purpose: str, data: bytes) -> _StoredFile:
        stored = _StoredFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename,
            purpose=purpose,
            data=data,
            created_at=int(time.time()),
        )
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def _batches_api(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        if self._api_fault(handler, "batches", method, path):
            return
        parts = path.split("/")[2:]
        if method == "POST" and not parts:
            self._create_batch(handler, body)
            return
        with self._lock:
            batch = self._batches.get(parts[0]) if parts else None
        if batch is None:
            _send_json(handler, 404, _error_body(f"No batch found at {path}", "invalid_request_error"))
        elif method == "GET" and len(parts) == 1:
            self._advance(batch)
            _send_json(handler, 200, batch.snapshot())
        elif method == "POST" and parts[1:] == ["cancel"]:
            batch.cancel()
            _send_json(handler, 200, batch.snapshot())
        else:
            _send_json(handler, 404, _error_body(f"Unknown path {method} {path}", "not_found"))

    def _create_batch(self, handler: _Handler, body: Any) -> None:
        body = body if isinstance(body, Mapping) else {}
        with self._lock:
            stored = self._files.get(str(body.get("input_file_id")))
        url = body.get("endpoint")
        problem = None
        if stored is None or stored.purpose != "batch":
            problem = f"input_file_id {body.get('input_file_id')!r} is not an uploaded batch file"
        elif url not in BATCH_URLS:
            problem = f"endpoint must be one of {sorted(BATCH_URLS)}"
        elif body.get("completion_window") != "24h":
            problem = "completion_window must be '24h'"
        if problem is not None or stored is None:
            _send_json(handler, 400, _error_body(problem or "bad request", "invalid_request_error"))
            return
        lines, errors = validate_batch(stored.data, str(url))
        behaviour = self._next_batch_behaviour(stored.data.decode("utf-8", errors="replace"))
        if not errors and behaviour is not None and behaviour["kind"] == "batch_failed":
            errors = [
                _batch_error(
                    str(behaviour.get("code", "batch_failed")),
                    str(behaviour.get("message", "The batch failed")),
                )
            ]
        with self._lock:
            delay = self._settings.batch_delay
        batch = _Batch.create(
            input_file_id=stored.id,
            endpoint=str(url),
            metadata=body.get("metadata"),
            lines=lines,
            errors=errors,
            behaviour=behaviour,
            due=time.monotonic() + delay + (_delay(behaviour) if behaviour else 0.0),
            bearer=_bearer(handler),
        )
        with self._lock:
            self._batches[batch.info["id"]] = batch
        # OpenAI answers the creation with the batch still being validated.
        _send_json(handler, 200, {**batch.snapshot(), "status": "validating"})

    def _next_batch_behaviour(self, text: str) -> Behaviour | None:
        with self._lock:
            for index, behaviour in enumerate(self._script):
                if behaviour["kind"] in BATCH_KINDS and str(behaviour.get("match", "")) in text:
                    behaviour["times"] -= 1
                    if behaviour["times"] <= 0:
                        del self._script[index]
                    return dict(behaviour)
            for behaviour in self._defaults:
                if behaviour["kind"] in BATCH_KINDS and str(behaviour.get("match", "")) in text:
                    return dict(behaviour)
        return None

    def _advance(self, batch: _Batch) -> None:
        """Answer the batch's lines once its processing delay has passed."""
        with batch.lock:
            if batch.info["status"] != "in_progress" or time.monotonic() < batch.due:
                return
            answered = batch.answer_limit()
            outputs: list[dict[str, Any]] = []
            failures: list[dict[str, Any]] = []
            for index, line in enumerate(batch.lines):
                if index >= answered:
                    failures.append(_expired_line(line))
                    continue
                entry, ok = self._batch_line(batch, line)
                (outputs if ok else failures).append(entry)
            output = self._store_file(f"{batch.info['id']}_output.jsonl", "batch_output", _jsonl(outputs))
            failed = (
                self._store_file(f"{batch.info['id']}_error.jsonl", "batch_output", _jsonl(failures))
                if failures
                else None
            )
            batch.finish(
                output_file_id=output.id if outputs else None,
                error_file_id=failed.id if failed else None,
                completed=len(outputs),
                failed=len(failures),
                expired=answered < len(batch.lines),
            )

    def _batch_line(self, batch: _Batch, line: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """One line through the same behaviours as a live call."""
        endpoint = BATCH_URLS[str(line["url"])]
        body = {k: v for k, v in line["body"].items() if k not in ("stream", "stream_options")}
        prompt = _chat_prompt(body) if endpoint == "chat" else _completion_prompt(body)
        call = _Call(
            endpoint=endpoint, body=body, info=read_prompt(prompt), bearer=batch.bearer, via="batch"
        )
        record = self._record_start(call)
        behaviour = self._next_behaviour(call)
        with self._lock:
            record.update(behaviour=behaviour["kind"], custom_id=line["custom_id"], batch_id=batch.info["id"])
        if self.strict_models and call.model not in self.models:
            outcome = _Outcome(status=404, body=_model_not_found(call.model))
        else:
            outcome = respond(behaviour, call)
        self._record_end(record, outcome)
        entry: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"]}
        if outcome.disconnect:
            error = {"code": "server_error", "message": "The server closed the connection without answering"}
            return {**entry, "response": None, "error": error}, False
        response = {
            "status_code": outcome.status,
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
            "body": outcome.body or {},
        }
        return {**entry, "response": response, "error": None}, outcome.status == 200


def _model_not_found(model: str) -> dict[str, Any]:
    return _error_body(
        f"The model '{model}' does not exist",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def _rate_limited(message: str, retry_after: float, reason: str) -> _Outcome:
    return _Outcome(
        status=429,
        body=_error_body(message, "rate_limit_exceeded", "rate_limit_exceeded"),
        headers={"Retry-After": str(math.ceil(retry_after)), "x-fake-rejected": reason},
    )


def _bearer(handler: _Handler) -> str:
    value = handler.headers.get("Authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else ""


def _read_json(handler: _Handler) -> tuple[Any, str | None]:
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length > 0 else b""
    if not raw:
        return None, None
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, f"Request body is not valid JSON: {exc}"


def _send_json(
    handler: _Handler, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def _send_outcome(handler: _Handler, outcome: _Outcome) -> None:
    if outcome.stream and not outcome.disconnect and outcome.status == 200:
        _send_stream(handler, outcome)
        return
    if outcome.disconnect:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return
    _send_json(handler, outcome.status, outcome.body or {}, outcome.headers)


# --------------------------------------------------------------------------
# Files and batches (storage, JSONL validation, output format)
# --------------------------------------------------------------------------


@dataclass
class _Multipart:
    """A multipart/form-data body: field name -> (filename, bytes)."""

    parts: dict[str, tuple[str | None, bytes]]


def _parse_multipart(content_type: str, raw: bytes) -> _Multipart:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise ValueError("the multipart body could not be read")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return _Multipart(parts)


@dataclass
class _StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    info: dict[str, Any]
    lines: list[dict[str, Any]]
    behaviour: Behaviour | None
    due: float
    bearer: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: Any,
        lines: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        behaviour: Behaviour | None,
        due: float,
        bearer: str,
    ) -> _Batch:
        now = int(time.time())
        info: dict[str, Any] = {
            "id": f"batch_{uuid.uuid4().hex[:24]}",
            "object": "batch",
            "endpoint": endpoint,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "failed" if errors else "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None if errors else now,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": now if errors else None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": metadata if isinstance(metadata, dict) else None,
        }
        return cls(info=info, lines=lines, behaviour=behaviour, due=due, bearer=bearer)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.info))

    def answer_limit(self) -> int:
        if self.behaviour is not None and self.behaviour["kind"] == "batch_expired":
            return max(0, int(self.behaviour.get("n", 0)))
        return len(self.lines)

    def finish(
        self,
        *,
        output_file_id: str | None,
        error_file_id: str | None,
        completed: int,
        failed: int,
        expired: bool,
    ) -> None:
        now = int(time.time())
        self.info.update(
            status="expired" if expired else "completed",
            output_file_id=output_file_id,
            error_file_id=error_file_id,
            finalizing_at=now,
            request_counts={"total": len(self.lines), "completed": completed, "failed": failed},
        )
        self.info["expired_at" if expired else "completed_at"] = now

    def cancel(self) -> None:
        with self.lock:
            if self.info["status"] in ("validating", "in_progress"):
                now = int(time.time())
                self.info.update(status="cancelled", cancelling_at=now, cancelled_at=now)


def _batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_batch_line(line: Any, number: int, url: str, seen: set[str]) -> dict[str, Any] | None:
    if not isinstance(line, dict):
        return _batch_error("invalid_json_line", "Each line must be a JSON object.", number)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _batch_error("missing_required_parameter", "custom_id is required.", number, "custom_id")
    if custom_id in seen:
        return _batch_error("duplicate_custom_id", f"custom_id {custom_id!r} is not unique.", number, "custom_id")
    seen.add(custom_id)
    if line.get("method") != "POST":
        return _batch_error("invalid_method", "method must be POST.", number, "method")
    if line.get("url") != url:
        return _batch_error("mismatched_endpoint", f"url must be the batch endpoint {url}.", number, "url")
    body = line.get("body")
    if not isinstance(body, dict) or not body.get("model"):
        return _batch_error("missing_required_parameter", "body with a model is required.", number, "body")
    return None


def validate_batch(data: bytes, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of a batch input file, or the errors that fail the batch."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_batch_error("invalid_file", "The file is not UTF-8 text.")]
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(_batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        problem = _check_batch_line(line, number, url, seen)
        if problem is not None:
            errors.append(problem)
        else:
            lines.append(line)
    models = {str(line["body"]["model"]) for line in lines}
    if len(models) > 1:
        errors.append(_batch_error("mismatched_model", "All requests of a batch must use one model."))
    if not lines and not errors:
        errors.append(_batch_error("empty_file", "The batch input file has no requests."))
    return lines, errors


def _expired_line(line: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": line["custom_id"],
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def _jsonl(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _read_body(handler: _Handler) -> tuple[Any, str | None]:
    """JSON bodies as parsed JSON, multipart uploads as :class:`_Multipart`."""
    content_type = handler.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return _read_json(handler)
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length > 0 else b""
    try:
        return _parse_multipart(content_type, raw), None
    except (ValueError, TypeError) as exc:
        return None, f"Request body is not valid multipart: {exc}"


def _send_bytes(handler: _Handler, data: bytes, content_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


# --------------------------------------------------------------------------
# Remote control (for a server running in another process)
# --------------------------------------------------------------------------


class FakeLLMClient:
    """Drive a FakeLLMServer in another process through its /_fake endpoints."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        root = base_url.rstrip("/")
        self.root = root.removesuffix("/v1")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.root + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"null")

    def script(
        self, behaviours: Sequence[Mapping[str, Any]], *, append: bool = False
    ) -> None:
        self._request(
            "POST", "/_fake/script", {"behaviours": list(behaviours), "append": append}
        )

    def set_default(
        self, behaviour: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    ) -> None:
        self._request("POST", "/_fake/default", {"default": behaviour})

    def configure(self, **settings: Any) -> None:
        self._request("POST", "/_fake/settings", settings)

    def reset(self) -> None:
        self._request("POST", "/_fake/reset", {})

    def calls(self, *, since: int = 0, brief: bool = False) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"since": since, "brief": int(brief)})
        return list(self._request("GET", f"/_fake/calls?{query}"))

    def state(self) -> dict[str, Any]:
        return dict(self._request("GET", "/_fake/state"))


# --------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds added to every generation call",
    )
    parser.add_argument(
        "--capacity", type=int, default=None, help="max concurrent calls before 429"
    )
    parser.add_argument(
        "--rpm", type=int, default=None, help="requests per minute before 429"
    )
    parser.add_argument(
        "--model", action="append", dest="models", help="model id to list (repeatable)"
    )
    parser.add_argument(
        "--strict-models", action="store_true", help="404 for models not listed"
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="seconds between the chunks of a streamed answer",
    )
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="seconds a batch stays in progress before its lines are answered",
    )
    parser.add_argument(
        "--default", type=json.loads, default=None, help="default behaviour(s) as JSON"
    )
    parser.add_argument(
        "--script",
        type=json.loads,
        default=None,
        help="scripted behaviours as a JSON list",
    )
    args = parser.parse_args(argv)
    server = FakeLLMServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        capacity=args.capacity,
        rpm=args.rpm,
        models=args.models or ("fake-model",),
        strict_models=args.strict_models,
        chunk_delay=args.chunk_delay,
        batch_delay=args.batch_delay,
    )
    if args.default is not None:
        server.set_default(args.default)
    if args.script is not None:
        server.script(args.script)
    stopped = threading.Event()
    _on_signals(lambda: stopped.set())
    server.start()
    print(server.base_url, flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _on_signals(callback: Callable[[], None]) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        callback()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


if __name__ == "__main__":
    sys.exit(main())
