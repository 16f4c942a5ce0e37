"""What the fake reads from a request: the prompt conventions of ``masscer.lib.llm``.

The ``<source>`` fence, ``Number of pairs: N``, ``<existing_questions>``, the agent's
``<reference_examples>`` and the ``User:`` lines of a completion-mode transcript. Every
regular expression about the prompt format lives here, built from the markers of
``masscer.lib.llm.prompts`` (the one place the format lives), so that a change of format
changes the fake too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from masscer.lib.llm.prompts import (
    COUNT_LABEL,
    EXISTING_CLOSE,
    EXISTING_OPEN,
    JUDGE_CLOSE,
    JUDGE_OPEN,
    OVERLAP_QUOTE_CLOSE,
    OVERLAP_RULE,
    QUESTION_LABEL,
    REFERENCE_CLOSE,
    REFERENCE_OPEN,
    SOURCE_CLOSE,
    SOURCE_OPEN,
    TYPE_LABEL,
    USER_LABEL,
)


def _fenced(opener: str, closer: str, *, closer_on_its_line: bool = True) -> re.Pattern[str]:
    """The text after a line ``opener`` up to ``closer`` (on a line of its own if so required)."""
    newline = r"\n" if closer_on_its_line else r"\n?"
    return re.compile(rf"{re.escape(opener)}\n(.*?){newline}{re.escape(closer)}", re.DOTALL)


_SOURCE_BLOCK = _fenced(SOURCE_OPEN, SOURCE_CLOSE)
_EXISTING_BLOCK = _fenced(EXISTING_OPEN, EXISTING_CLOSE, closer_on_its_line=False)
_COUNT_LINE = re.compile(rf"^{re.escape(COUNT_LABEL)}\s*(\d+)\s*$", re.MULTILINE)


def _overlap_pattern() -> re.Pattern[str]:
    """The overlap rule with its noun and the quoted end of the repeated passage as groups."""
    head, rest = OVERLAP_RULE.split("{noun}")
    middle, tail = rest.split("{tail}")
    return re.compile(
        rf"^{re.escape(head)}(\w+){re.escape(middle)}(.*?){re.escape(OVERLAP_QUOTE_CLOSE)}"
        + re.escape(tail.removeprefix(OVERLAP_QUOTE_CLOSE)),
        re.MULTILINE,
    )


_OVERLAP_RULE = _overlap_pattern()
_JUDGE_BLOCK = _fenced(JUDGE_OPEN, JUDGE_CLOSE)
_REFERENCE_BLOCK = _fenced(REFERENCE_OPEN, REFERENCE_CLOSE, closer_on_its_line=False)
_TRANSCRIPT_USER = re.compile(rf"^{re.escape(USER_LABEL)}[ \t]?(.*)$", re.MULTILINE)
# The question-type rule line (chat mode "- Question type: key. ...", completion mode without "- ").
_TYPE_LINE = re.compile(rf"^(?:- )?{re.escape(TYPE_LABEL)} (\w+)\.", re.MULTILINE)


def source_hash(text: str) -> str:
    """Hash used in the call log: sha256 of the stripped source text."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptInfo:
    prompt: str
    source: str | None
    count: int | None
    existing: tuple[str, ...]
    # The quoted end of the passage the source repeats from the previous chunk, if the prompt says so.
    overlap_tail: str | None = None
    # A judge request (``masscer.lib.llm.judge``): the pairs to score, else None.
    judged: tuple[dict[str, Any], ...] | None = None
    # The kind of question the prompt asks for ("factual" when it names none).
    question_type: str = "factual"


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
        overlap_tail=next((m.group(2) for m in _OVERLAP_RULE.finditer(outside)), None),
        judged=_judged(outside),
        question_type=next((m.group(1) for m in _TYPE_LINE.finditer(outside)), "factual"),
    )


def _judged(outside: str) -> tuple[dict[str, Any], ...] | None:
    blocks = _JUDGE_BLOCK.findall(outside)
    if not blocks:
        return None
    try:
        items = json.loads(blocks[-1].replace("&lt;", "<").replace("&gt;", ">"))
    except ValueError:
        return ()
    return tuple(item for item in items if isinstance(item, dict)) if isinstance(items, list) else ()


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


def reference_questions(prompt: str) -> list[str]:
    """The ``Q:`` lines between ``<reference_examples>`` tags, in order."""
    questions: list[str] = []
    for block in _REFERENCE_BLOCK.findall(prompt):
        for line in block.splitlines():
            if line.startswith(QUESTION_LABEL):
                questions.append(line.removeprefix(QUESTION_LABEL).strip())
    return questions
