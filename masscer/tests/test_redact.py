from __future__ import annotations

import pytest

from masscer.lib.redact import luhn_valid, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+bikes@example.co.uk today.", "Write to [email] today."),
        ("Contact: support@northwind-cycles.com", "Contact: [email]"),
        ("Call +33 6 12 34 56 78 now", "Call [phone] now"),
        ("Call +1 (555) 123-4567.", "Call [phone]."),
        ("Call +44 20 7946 0958", "Call [phone]"),
        ("Call +49 (0) 30 1234567", "Call [phone]"),
        ("Call 0049 30 1234567", "Call [phone]"),
        ("Call (555) 123-4567", "Call [phone]"),
        ("Call 555-123-4567", "Call [phone]"),
        ("Call 555.123.4567", "Call [phone]"),
        ("Portable : 06 12 34 56 78", "Portable : [phone]"),
        ("London 020 7946 0958", "London [phone]"),
        ("Berlin 030 1234567", "Berlin [phone]"),
        ("Mobile 0612345678.", "Mobile [phone]."),
        ("Card 4111 1111 1111 1111 expires", "Card [card] expires"),
        ("Card 4111-1111-1111-1111", "Card [card]"),
        ("Card 4111111111111111", "Card [card]"),
        ("Amex 3782 822463 10005", "Amex [card]"),
    ],
)
def test_it_masks_personal_data(text: str, expected: str) -> None:
    assert redact(text) == (expected, 1)


@pytest.mark.parametrize(
    "text",
    [
        "In 2024 we sold 1500 bikes.",
        "Delivered on 2024-01-15 at 10:30:00.",
        "Bought on 15.01.2024, returned 01/02/2024 10 days later.",
        "The Gold plan costs 149 euros per year.",
        "Dial 112 in an emergency.",
        "Order 12345678 shipped.",
        "Firmware version 1.2.3 fixed it.",
        "Created at 1767225600.",
        "Set the gap to 5 to 6 mm.",
        "ISBN 978-3-16-148410-0",
        "Frames from 1990-2000 are steel.",
        "Server 192.168.0.1 is down.",
        "Revenue was 1,234,567.89 euros.",
        "Room 020, desk 0123.",
        "Open 12:30-14:00.",
        "Card 4111 1111 1111 1112 fails Luhn.",
        "no at-sign here: jane at example dot com",
    ],
)
def test_it_leaves_ordinary_numbers_and_text_alone(text: str) -> None:
    assert redact(text) == (text, 0)


def test_it_counts_every_replacement() -> None:
    text = "Mail a@b.io or c@d.io, call 555-123-4567, pay with 5555 5555 5555 4444."

    masked, count = redact(text)

    assert masked == "Mail [email] or [email], call [phone], pay with [card]."
    assert count == 4


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
