"""Mask personal data (e-mail addresses, phone numbers, card numbers) before text leaves us.

Deliberately conservative about numbers: a year, a date, a price or an order number is worth
more to a training example than a false "[phone]" is worth to privacy, so a number only counts
as a phone when it has the shape of one (an international prefix, a national trunk 0, or the
North American 3-3-4 grouping) and a phone's digit count; a card needs a valid Luhn checksum.
"""
from __future__ import annotations

import re
from collections.abc import Callable

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)
# 13-19 digits, single spaces or dashes allowed between them; never after "+" (a phone).
CARD = re.compile(r"(?<![\w+])[1-9](?:[ -]?\d){12,18}(?![\w])")
PHONE = re.compile(
    r"""
    (?<![\w+/.,-])
    (?:
        (?:\+|\b00)[1-9]\d{0,2}                     # international: +33 / 0033
        (?:[ .-]?\(\d{1,4}\))?                      # optional (0) or area code
        (?:[ .-]?\d{1,5}){2,6}
      | (?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}   # North American (555) 123-4567
      | \(?\b0\d{1,4}\)?(?:[ ./-]?\d{2,4}){2,5}        # national with trunk 0: 06 12 34 56 78
    )
    (?![\w]|[.,-]\d)
    """,
    re.VERBOSE,
)
# d.m.y / y-m-d shapes inside a phone candidate mean it is a date (or a date and a time).
DATE_LIKE = re.compile(r"\b\d{1,4}([./-])\d{1,2}\1\d{1,4}\b")
INTERNATIONAL_DIGITS = (8, 15)
NATIONAL_DIGITS = (9, 12)


def redact(text: str) -> tuple[str, int]:
    """The text with e-mails, phone numbers and card numbers masked, and how many were masked."""
    count = 0
    for pattern, replace in ((EMAIL, _email), (CARD, _card), (PHONE, _phone)):
        text, replaced = _substitute(pattern, replace, text)
        count += replaced
    return text, count


def _substitute(pattern: re.Pattern[str], replace: Callable[[str], str], text: str) -> tuple[str, int]:
    replaced = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal replaced
        result = replace(match.group(0))
        if result != match.group(0):
            replaced += 1
        return result

    return pattern.sub(substitute, text), replaced


def _email(found: str) -> str:
    return "[email]"


def _card(found: str) -> str:
    digits = _digits(found)
    return "[card]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else found


def _phone(found: str) -> str:
    if DATE_LIKE.search(found):
        return found
    digits = _digits(found)
    international = found.startswith(("+", "00"))
    low, high = INTERNATIONAL_DIGITS if international else NATIONAL_DIGITS
    if not international and found.lstrip("(")[0] != "0" and len(digits) != 10:
        return found  # the North American branch: exactly ten digits
    return "[phone]" if low <= len(digits) <= high else found


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0
