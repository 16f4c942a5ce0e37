"""Template helpers of the web UI: the evidence highlight, optional links, labels."""
from __future__ import annotations

import re
import unicodedata
from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from training.question_types import QUESTION_TYPES
from training.validation import REASON_LABELS, _evidence_form

register = template.Library()

_QUOTE_CHARS = "\"'“”‘’«»„`"


def _folded(text: str) -> tuple[str, list[int]]:
    """The text as evidence_in_source compares it, and for each of its characters the source index."""
    chars: list[str] = []
    where: list[int] = []
    for index, char in enumerate(text):
        if char.isspace() or char == "…":
            continue
        if char.isascii():  # NFKC leaves ASCII alone and casefold() is lower() there
            chars.append(char.lower())
            where.append(index)
            continue
        for folded in unicodedata.normalize("NFKC", char).casefold():
            if not folded.isspace():
                chars.append(folded)
                where.append(index)
    return "".join(chars), where


def _ascii_span(text: str, needle: str) -> tuple[int, int] | None:
    """`_folded`'s match for ASCII text, found in the source itself (spaces allowed between the
    quote's characters): a review page highlights 25 chunks of a few KB, and one regex search is
    far cheaper than a Python step per character."""
    if not needle.isascii():
        return None  # folded ASCII holds only ASCII
    match = re.search(r"\s*".join(map(re.escape, needle)), text, re.IGNORECASE)
    return match.span() if match else None


def evidence_span(text: str, evidence: str) -> tuple[int, int] | None:
    """Start and end (in `text`) of the evidence quote, matched the way validation matches it."""
    needle = _evidence_form(evidence)
    if not needle:
        return None
    if text.isascii():
        span = _ascii_span(text, needle)
        if span is None:
            return None
        start, end = span
    else:
        haystack, where = _folded(text)
        found = haystack.find(needle)
        if found < 0:
            return None
        start, end = where[found], where[found + len(needle) - 1] + 1
    # The comparison drops closing punctuation; show it marked when the source has it too.
    tail = evidence.rstrip().rstrip(_QUOTE_CHARS)[-1:]
    if tail in (".", "…", "!", "?") and text[end : end + 1] == tail:
        end += 1
    return start, end


@register.filter
def highlight_evidence(text: str, evidence: str) -> SafeString:
    """The chunk text escaped, with only the evidence quote wrapped in <mark>.

    Model output and source text are data: every part is escaped before the one tag is added.
    """
    text = str(text or "")
    span = evidence_span(text, str(evidence or ""))
    if span is None:
        return escape(text)
    start, end = span
    return mark_safe(  # noqa: S308 - each piece is escaped; only <mark> is ours
        f"{escape(text[:start])}<mark class=\"evidence\">{escape(text[start:end])}</mark>{escape(text[end:])}"
    )


@register.simple_tag
def optional_url(name: str, *args: Any) -> str:
    """The URL, or "" when no such route exists (a feature another module may not have yet)."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""


@register.filter
def reason_label(key: str) -> str:
    return REASON_LABELS.get(key, str(key).replace("_", " "))


@register.filter
def question_type_label(key: str) -> str:
    """A kind of question for people ("multi_hop" -> "Multi-hop (two passages)")."""
    return QUESTION_TYPES.get(key, str(key).replace("_", " "))


@register.filter
def seconds(value: float | None) -> str:
    """12.3 → '12 s', 75 → '1 min 15 s'."""
    if value is None:
        return "–"
    total = int(round(value))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.simple_tag
def percent(part: int | None, whole: int | None) -> int:
    if not whole:
        return 0
    return max(0, min(100, round(100 * (part or 0) / whole)))


@register.filter
def thousands(value: Any) -> str:
    """1234567 → '1,234,567' (humanize is not installed)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def money(value: Any) -> str:
    """A cost in dollars: cents for sums over a dollar, four decimals for small ones."""
    if value is None:
        return "–"
    amount = float(value)
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"
