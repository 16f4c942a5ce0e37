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

    python -m testing.fakellm --port 8765 --latency 0.5 --capacity 64

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

Judge requests (``masscer.lib.llm.judge``, recognised by the ``<pairs_to_judge>``
block of ``masscer.lib.llm.prompts``) take only judge behaviours: kind ``judge``
(``low``: a marker string; each pair whose question, answer or evidence holds it
scores ``score``, default 1, on every criterion, the others 5), or any kind with
``"judge": true`` (e.g. ``http_error``, ``invalid_json``). Without one every pair
scores 5; generation behaviours are never used up by judge requests. Judge requests sent
as batch lines take the same behaviours (``"endpoint": "batch"`` for batch lines only).

Server settings: ``latency`` (seconds added to every generation call),
``capacity`` (max in-flight generation calls; beyond it 429 with
Retry-After: 1), ``rpm`` (sliding 60 s window; 429 with Retry-After),
``batch_delay`` (seconds a batch stays in progress; latency, capacity and rpm
do not apply to batch lines).  Real
stop sequences and ``max_tokens`` (≈ 4 characters per token) are honoured.

Layout: ``prompts`` (what is read from a request: every prompt-format regex), ``pairs``
(grounded pair generation), ``chat`` (replies without the generation conventions),
``behaviours`` (kinds -> outcomes), ``streaming`` (SSE chunks), ``embeddings``, ``wire``
(HTTP plumbing), ``batches`` (files and batches), ``server`` (:class:`FakeLLMServer`),
``client`` (:class:`FakeLLMClient`) and ``cli`` (``python -m testing.fakellm``).
"""

from __future__ import annotations

from .behaviours import KINDS, render_blocks, validate_behaviour
from .chat import chat_reply, conversational, transcript_reply
from .cli import main
from .client import FakeLLMClient
from .embeddings import embed
from .pairs import make_pairs
from .prompts import PromptInfo, read_prompt, reference_questions, source_hash
from .server import KEEP, FakeLLMServer
from .streaming import stream_chunks

__all__ = [
    "KEEP",
    "KINDS",
    "FakeLLMClient",
    "FakeLLMServer",
    "PromptInfo",
    "chat_reply",
    "conversational",
    "embed",
    "main",
    "make_pairs",
    "read_prompt",
    "reference_questions",
    "render_blocks",
    "source_hash",
    "stream_chunks",
    "transcript_reply",
    "validate_behaviour",
]
