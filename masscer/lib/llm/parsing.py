"""Reading a model's reply: pairs from JSON or ``Q:``/``A:``/``E:`` text, and the response's parts.

The parsers are tolerant (fences, prose, aliases, cut-off output) and public so that callers and
tests can reuse them; the response helpers read the SDK's objects (or the same shape built from
JSON by :func:`namespace`) without trusting any field to be there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import json_repair

from .errors import LLMTransientError, not_openai
from .prompts import EXAMPLE_SEPARATOR, SOURCE_OPEN
from .types import LLMConfig, Pair, Usage

_FIELD_ALIASES = {
    "question": ("question", "q"),
    "answer": ("answer", "a"),
    "evidence": ("evidence", "e", "quote"),
}
_FENCED = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_MAX_DECODE_STARTS = 50


def parse_json_pairs(text: str) -> tuple[list[Pair], str | None]:
    """Tolerantly parse a JSON reply into pairs; return (pairs, parse_error).

    Accepts {"pairs": [...]}, any object holding a list of objects, a single
    pair object or a top-level list, bare or inside ```json fences or prose.
    Items missing fields become pairs with empty strings (the caller rejects
    them); truncated output yields the complete items plus a parse error.
    """
    stripped = text.strip()
    if not stripped:
        return [], "the model returned no text"
    first_error: str | None = None
    for candidate in _json_candidates(stripped):
        items = _items_from(candidate)
        if items is not None:
            return [_pair_from(item) for item in items], None
        first_error = first_error or 'JSON has no "pairs" list'
    salvaged = _salvage_objects(stripped)
    if salvaged:
        return salvaged, (
            f"output is not complete JSON (cut off?); salvaged {len(salvaged)} complete pair(s)"
        )
    blocks, _ = parse_block_pairs(stripped)
    if blocks:
        # A chat model that ignored the JSON request but wrote Q:/A:/E:
        # blocks still delivered usable pairs.
        return blocks, None
    repaired = _repaired_items(stripped)
    if repaired:
        # Single quotes, unquoted keys, raw newlines or bad escapes: the pairs are all there,
        # so they are taken rather than paid for again (validation still judges each one).
        return [_pair_from(item) for item in repaired], None
    return [], first_error or _json_error(stripped)


def _repaired_items(text: str) -> list[Any] | None:
    """The items of a reply that is almost JSON, repaired leniently (the last fallback)."""
    for chunk in [m.group(1).strip() for m in _FENCED.finditer(text)] or [text]:
        try:
            value = json_repair.loads(chunk)
        except Exception:  # noqa: BLE001 - a repair that fails is no repair; the reply is re-asked
            continue
        items = _items_from(value)
        if items and all(isinstance(item, dict) for item in items):
            return items
    return None


def _json_candidates(text: str) -> Iterator[Any]:
    """Yield JSON values found in text: whole text, fenced blocks, embedded."""
    sources = [text] + [m.group(1).strip() for m in _FENCED.finditer(text)]
    for chunk in sources:
        try:
            yield json.loads(chunk)
            continue
        except ValueError:
            pass
        yield from _embedded_json(chunk)


def _embedded_json(text: str) -> Iterator[Any]:
    """Yield objects / lists of objects embedded in prose, outermost first."""
    decoder = json.JSONDecoder()
    end = 0
    tried = 0
    for start, char in enumerate(text):
        if start < end or char not in "{[":
            continue
        tried += 1
        if tried > _MAX_DECODE_STARTS:
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        # Only containers of objects: skips "[1]" in prose, and a lone pair
        # object inside a cut-off array (that case is for _salvage_objects).
        if _is_container(value):
            yield value


def _is_container(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(i, dict) for i in value)
    return isinstance(value, dict) and any(isinstance(v, list) for v in value.values())


def _items_from(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        return None
    pairs = value.get("pairs")
    if isinstance(pairs, list):
        return pairs
    for inner in value.values():
        if (
            isinstance(inner, list)
            and inner
            and all(isinstance(i, dict) for i in inner)
        ):
            return inner
    if any(_lookup(value, name) is not None for name in _FIELD_ALIASES):
        return [value]
    return None


def _lookup(item: Mapping[str, Any], name: str) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    for alias in _FIELD_ALIASES[name]:
        if alias in lowered:
            return lowered[alias]
    return None


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return ""


def _pair_from(item: Any) -> Pair:
    if not isinstance(item, Mapping):
        return Pair(question="", answer="", evidence="")
    return Pair(
        question=_field_text(_lookup(item, "question")),
        answer=_field_text(_lookup(item, "answer")),
        evidence=_field_text(_lookup(item, "evidence")),
    )


def _salvage_objects(text: str) -> list[Pair]:
    """Recover the complete objects of a JSON array that was cut off."""
    anchor = text.find('"pairs"')
    start = text.find("[", max(anchor, 0))
    if start < 0:
        return []
    decoder = json.JSONDecoder()
    position = start + 1
    pairs: list[Pair] = []
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] != "{":
            return pairs
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return pairs
        if isinstance(value, dict):
            pairs.append(_pair_from(value))


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"output is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return "output is not valid JSON"


_BLOCK_LABEL = re.compile(
    r"^\s*(?:[-*]\s*|\d+[.)]\s*)?(question|answer|evidence|q|a|e)\s*\d*\s*[:：]\s?(.*)$",
    re.IGNORECASE,
)
_LABEL_FIELD = {"q": "question", "a": "answer", "e": "evidence"}
_QUOTES = ('"', "'", "“", "”", "‘", "’", "«", "»")


def parse_block_pairs(
    text: str, *, truncated: bool = False
) -> tuple[list[Pair], str | None]:
    """Parse ``Q:``/``A:``/``E:`` blocks (also Question:/Answer:/Evidence:).

    A missing evidence line gives an empty evidence string.  When the output
    was cut off (``truncated``), an incomplete last block is dropped.
    """
    blocks: list[dict[str, str]] = []
    current_field = ""
    saw_answer_or_evidence = False
    for line in text.splitlines():
        if line.strip() == EXAMPLE_SEPARATOR or line.strip().lower().startswith(
            SOURCE_OPEN
        ):
            break
        match = _BLOCK_LABEL.match(line)
        if match:
            current_field = _LABEL_FIELD.get(match.group(1).lower()[0], "question")
            if current_field == "question" or not blocks:
                blocks.append({"question": "", "answer": "", "evidence": ""})
            saw_answer_or_evidence = (
                saw_answer_or_evidence or current_field != "question"
            )
            blocks[-1][current_field] = match.group(2).strip()
        elif line.strip() and blocks and current_field:
            # Continuation of a wrapped line.
            blocks[-1][current_field] = (
                f"{blocks[-1][current_field]} {line.strip()}".strip()
            )
    if not saw_answer_or_evidence:
        return [], "no Q:/A:/E: blocks found in the output"
    if (
        truncated
        and blocks
        and (not text.endswith("\n") or not all(blocks[-1].values()))
    ):
        blocks.pop()
    pairs = [
        Pair(
            question=b["question"],
            answer=b["answer"],
            evidence=_strip_quotes(b["evidence"]),
        )
        for b in blocks
    ]
    return pairs, None


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        return text[1:-1].strip()
    return text


# --------------------------------------------------------------------------
# Response helpers
# --------------------------------------------------------------------------


def first_choice(completion: Any, config: LLMConfig) -> Any:
    choices = getattr(completion, "choices", None)
    if isinstance(completion, (str, bytes)) or choices is None:
        raise not_openai(config)
    if not choices:
        raise LLMTransientError(
            f"Model server at {config.base_url} returned no choices"
        )
    return choices[0]


def finish_reason_of(choice: Any) -> str:
    reason = getattr(choice, "finish_reason", None)
    return str(reason) if reason else "stop"


def usage_of(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(
        prompt_tokens=as_int(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=as_int(getattr(usage, "completion_tokens", 0)),
    )


def as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def namespace(value: Any) -> Any:
    """JSON as attribute objects, the shape the SDK's parsed responses have."""
    if isinstance(value, Mapping):
        return SimpleNamespace(**{str(k): namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [namespace(v) for v in value]
    return value
