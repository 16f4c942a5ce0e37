"""The model door: the only package in the project that imports ``openai``.

Every public function makes (at most) one model request per call — except for the one-off
response-format negotiation in chat mode — and reports precisely what happened: parsed pairs
plus the raw output, finish reason and token usage, or an :class:`LLMTransientError` /
:class:`LLMPermanentError`.  Validation, top-ups, re-asking and retries belong to the caller
(Celery owns retries, so the SDK's own retries default to 0).  No Django here: configuration
comes in as dataclasses.

Layout (each module imports only those before it): ``types`` (config, params, pairs, usage,
replies, :class:`PairRequest`), ``prompts`` (the prompt format, the one place it lives),
``errors`` (classification, retry-after, key scrubbing), ``parsing`` (reading replies),
``client`` (the SDK client and the request parameters), ``pairs`` (generate), ``judge`` (score
pairs), ``chat`` (chat and streaming), ``embeddings`` and ``batch``.  Import the public names from here:
``from masscer.lib.llm import generate_pairs``.  Module state lives once, where it is used:
the client cache in ``client``, the response-format levels in ``pairs``, the servers without
stream usage in ``chat``; patch a name in the module that looks it up.  (``llm.chat`` is the
function; the module is ``importlib.import_module("masscer.lib.llm.chat")``.)
"""

from __future__ import annotations

from .batch import (
    BATCH_ENDPOINT,
    BATCH_FINAL,
    BATCH_WINDOW,
    BatchItem,
    BatchState,
    batch_cancel,
    batch_jsonl,
    batch_poll,
    batch_results,
    batch_submit,
)
from .chat import CHAT_ROLES, chat, chat_stream
from .client import check_endpoint, warm_up
from .embeddings import embed
from .errors import LLMError, LLMPermanentError, LLMTransientError, parse_retry_after
from .judge import JudgeItem, JudgeReply, JudgeScore, judge_pairs, judge_reply, judge_request, parse_judge_scores
from .pairs import build_chat_request, generate_pairs, pair_request
from .parsing import parse_block_pairs, parse_json_pairs
from .prompts import REFERENCE_CLOSE, REFERENCE_OPEN, reference_block
from .types import (
    DEFAULT_GUIDANCE,
    MODES,
    SOURCE_KINDS,
    STYLES,
    ChatDelta,
    ChatReply,
    GenParams,
    Guidance,
    LLMConfig,
    Pair,
    PairRequest,
    Reply,
    Usage,
)

__all__ = [
    "BATCH_ENDPOINT",
    "BATCH_FINAL",
    "BATCH_WINDOW",
    "CHAT_ROLES",
    "MODES",
    "REFERENCE_CLOSE",
    "REFERENCE_OPEN",
    "SOURCE_KINDS",
    "STYLES",
    "BatchItem",
    "BatchState",
    "ChatDelta",
    "ChatReply",
    "GenParams",
    "JudgeItem",
    "JudgeReply",
    "JudgeScore",
    "LLMConfig",
    "LLMError",
    "LLMPermanentError",
    "LLMTransientError",
    "Pair",
    "PairRequest",
    "Guidance",
    "DEFAULT_GUIDANCE",
    "Reply",
    "Usage",
    "batch_cancel",
    "batch_jsonl",
    "batch_poll",
    "batch_results",
    "batch_submit",
    "build_chat_request",
    "chat",
    "chat_stream",
    "check_endpoint",
    "embed",
    "generate_pairs",
    "judge_pairs",
    "judge_reply",
    "judge_request",
    "pair_request",
    "parse_block_pairs",
    "parse_json_pairs",
    "parse_judge_scores",
    "parse_retry_after",
    "reference_block",
    "warm_up",
]
