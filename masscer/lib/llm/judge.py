"""The judge pass: one model request scoring several question/answer pairs against their source.

Each pair gets 1-5 on faithfulness, answerability and usefulness (``prompts.JUDGE_CRITERIA``)
with a one-line reason each. Chat mode only (a base model cannot be asked to grade). The
reply is parsed tolerantly (fences, prose, almost-JSON via ``json_repair``); a pair the
reply leaves out or scores unreadably gets ``None``, and a reply that does not parse at all
is *not* an exception (see ``JudgeReply.parse_error``): the caller decides what an
unjudged pair means.

Live calls go through ``judge_pairs``; batch mode sends the same body (``judge_request``)
as a line of a batch (``JudgeItem``) and reads its output line with ``judge_reply``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import json_repair
import openai

from .client import client_for, format_key, model_for, request_params
from .errors import SDK_PARSE_ERRORS, LLMPermanentError, map_error, not_openai
from .pairs import FORMAT_LEVELS, format_level
from .parsing import as_text, finish_reason_of, first_choice, namespace, usage_of
from .prompts import JUDGE_CRITERIA, judge_system_message, judge_user_message
from .types import DEFAULT_PARAMS, GenParams, LLMConfig, Pair, Usage

_FENCED_JSON = ("```json", "```")
# Room for a score line and three one-line reasons per pair.
_TOKENS_PER_PAIR = 120
_TOKENS_BASE = 32


@dataclass(frozen=True)
class JudgeScore:
    faithfulness: int
    answerability: int
    usefulness: int
    reasons: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "faithfulness": self.faithfulness,
            "answerability": self.answerability,
            "usefulness": self.usefulness,
            "reasons": dict(self.reasons),
        }


@dataclass(frozen=True)
class JudgeReply:
    # One entry per pair judged, in order; None where the reply gave no usable score.
    scores: list[JudgeScore | None]
    usage: Usage
    parse_error: str | None
    raw_text: str
    model: str
    finish_reason: str = "stop"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgeItem:
    """One judge request of a batch (``masscer.lib.llm.batch``); the arguments of ``judge_pairs``."""

    custom_id: str
    source: str
    pairs: tuple[Pair, ...]
    params: GenParams = DEFAULT_PARAMS
    question_type: str = "factual"


def judge_pairs(
    config: LLMConfig,
    *,
    source: str,
    pairs: Sequence[Pair],
    params: GenParams = DEFAULT_PARAMS,
    question_type: str = "factual",
) -> JudgeReply:
    """Ask the model once to score ``pairs`` against ``source``.

    Raises LLMTransientError / LLMPermanentError when the request fails (and
    LLMPermanentError in completion mode); a reply that does not parse is not an exception.
    """
    body = judge_request(config, source=source, pairs=pairs, params=params, question_type=question_type)
    try:
        raw = client_for(config).post("/chat/completions", body=body, cast_to=httpx2.Response)
        completion = namespace(raw.json())
    except openai.OpenAIError as exc:
        raise map_error(exc, config, body["model"]) from exc
    except SDK_PARSE_ERRORS as exc:
        raise not_openai(config) from exc
    headers = {str(k).lower(): str(v) for k, v in getattr(raw, "headers", {}).items()}
    return judge_reply(completion, config, body["model"], len(pairs), headers=headers)


def judge_request(
    config: LLMConfig,
    *,
    source: str,
    pairs: Sequence[Pair],
    params: GenParams = DEFAULT_PARAMS,
    question_type: str = "factual",
) -> dict[str, Any]:
    """The Chat Completions body of a judge request (sent live, or as a batch line)."""
    if not pairs:
        raise ValueError("a judge request needs at least one pair")
    if config.mode != "chat":
        raise LLMPermanentError("the judge pass needs a chat model (the endpoint is in completion mode)")
    return _judge_body(config, source, pairs, model_for(config, params), question_type)


def judge_reply(
    completion: Any, config: LLMConfig, model: str, count: int, *, headers: Mapping[str, str] | None = None
) -> JudgeReply:
    """The JudgeReply of a Chat Completions response to a judge request of ``count`` pairs."""
    choice = first_choice(completion, config)
    text = as_text(getattr(getattr(choice, "message", None), "content", None))
    scores, error = parse_judge_scores(text, count)
    return JudgeReply(
        scores=scores,
        usage=usage_of(getattr(completion, "usage", None)),
        parse_error=error,
        raw_text=text,
        model=as_text(getattr(completion, "model", None)) or model,
        finish_reason=finish_reason_of(choice),
        headers=dict(headers or {}),
    )


def _judge_body(
    config: LLMConfig, source: str, pairs: Sequence[Pair], model: str, question_type: str
) -> dict[str, Any]:
    # The job's sampling settings are for writing pairs; a grader wants none of them but
    # a budget large enough for every pair (the user's stop sequences could cut the JSON).
    judge_params = GenParams(model=model, temperature=0.0)
    listed = [(p.question, p.answer, p.evidence) for p in pairs]
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": judge_system_message()},
            {"role": "user", "content": judge_user_message(source, listed, question_type)},
        ],
        **request_params(judge_params, max_tokens=_TOKENS_BASE + _TOKENS_PER_PAIR * len(pairs)),
    }
    # JSON mode where this endpoint is not known to refuse response formats.
    if FORMAT_LEVELS[format_level(format_key(config, model))] != "none":
        body["response_format"] = {"type": "json_object"}
    return body


def parse_judge_scores(text: str, count: int) -> tuple[list[JudgeScore | None], str | None]:
    """The scores of ``count`` pairs from a judge's reply; (scores, parse_error)."""
    value = _loads(text)
    entries = _entries(value)
    if entries is None:
        return [None] * count, "the judge's reply has no scores" if text.strip() else "the judge returned no text"
    scores: list[JudgeScore | None] = [None] * count
    for position, entry in enumerate(entries):
        index = _index_of(entry, position)
        if 0 <= index < count and scores[index] is None:
            scores[index] = _score(entry)
    missing = sum(1 for s in scores if s is None)
    return scores, f"the judge scored {count - missing} of {count} pairs" if missing else None


def _loads(text: str) -> Any:
    stripped = text.strip()
    start, end = _FENCED_JSON
    if start in stripped:
        stripped = stripped.split(start, 1)[1].split(end, 1)[0]
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    try:
        return json_repair.loads(stripped)
    except Exception:  # noqa: BLE001 - a repair that fails leaves the pairs unjudged
        return None


def _entries(value: Any) -> list[Any] | None:
    if isinstance(value, Mapping):
        for key in ("scores", "pairs", "results", "judgements", "judgments"):
            if isinstance(value.get(key), list):
                return value[key]
        if all(c in value for c in JUDGE_CRITERIA):
            return [value]
        return None
    return value if isinstance(value, list) else None


def _index_of(entry: Any, position: int) -> int:
    if isinstance(entry, Mapping):
        try:
            return int(entry.get("id")) - 1
        except (TypeError, ValueError):
            pass
    return position


def _score(entry: Any) -> JudgeScore | None:
    if not isinstance(entry, Mapping):
        return None
    values = [_grade(entry.get(name)) for name in JUDGE_CRITERIA]
    if any(v is None for v in values):
        return None
    reasons = entry.get("reasons")
    reasons = reasons if isinstance(reasons, Mapping) else {}
    lines = {name: " ".join(str(reasons.get(name) or "").split())[:300] for name in JUDGE_CRITERIA}
    faithfulness, answerability, usefulness = values
    return JudgeScore(faithfulness, answerability, usefulness, lines)  # type: ignore[arg-type]


def _grade(value: Any) -> int | None:
    try:
        grade = round(float(value))
    except (TypeError, ValueError):
        return None
    return min(5, max(1, grade))
