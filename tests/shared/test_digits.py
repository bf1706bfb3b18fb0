"""Whole numbers from clients' text (shared/digits.py): never a ValueError, whatever the text."""

from __future__ import annotations

import pytest

from shared.digits import natural_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("000042", 42),
        ("0" * 5000 + "7", 7),  # leading zeros: 7, though int() refuses 5,001 digits
        ("100", 100),
        ("101", 101),  # above the cap: cap + 1
        ("9" * 5000, 101),
        ("", None),
        ("²", None),  # str.isdigit() says yes; int() refuses
        ("\u0661", None),  # an Arabic-Indic one
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1.0", None),
        ("1_000", None),
    ],
)
def test_only_ascii_digits_are_a_number_and_large_ones_stop_above_the_cap(text, expected):
    assert natural_number(text, 100) == expected
