"""Micro-unit money: exact plain strings, half-up display rounding, strict parsing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cm_mqtt_bridge.core.money import (
    MICRO_PER_UNIT,
    format_money,
    format_plain,
    micro_to_decimal,
    parse_amount,
)

# Anything a wallet could report, and far beyond (format/parse must not care about size).
micros = st.integers(min_value=-(10**20), max_value=10**20)
currencies = st.sampled_from(["USD", "EUR", "GBP", "JPY", "CHF", "XAU"])


def half_up_cents(micro: int) -> int:
    """Independent oracle: micro -> cents, rounding half away from zero, in integers."""
    q, r = divmod(abs(micro), 10_000)
    if r >= 5_000:
        q += 1
    return q if micro >= 0 else -q


def expected_money(micro: int, currency: str) -> str:
    cents = half_up_cents(micro)
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole:,}.{frac:02d} {currency}"


# ---- format_plain ------------------------------------------------------------------------


@given(micros)
@example(0)
@example(1)
@example(-1)
@example(8059489)
@example(MICRO_PER_UNIT)
@example(-MICRO_PER_UNIT)
def test_format_plain_round_trips_exactly(micro: int) -> None:
    text = format_plain(micro)
    assert parse_amount(text) == micro


@given(micros)
def test_format_plain_is_a_plain_exact_decimal(micro: int) -> None:
    text = format_plain(micro)
    assert "e" not in text.lower()
    assert "," not in text
    assert " " not in text
    assert Decimal(text) == Decimal(micro) / MICRO_PER_UNIT
    if "." in text:
        whole, frac = text.split(".")
        assert 1 <= len(frac) <= 6
        assert not frac.endswith("0")
        assert whole.lstrip("-").isdigit()
    else:
        assert micro % MICRO_PER_UNIT == 0


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (8059489, "8.059489"),
        (125000, "0.125"),
        (5_000_000, "5"),
        (1, "0.000001"),
        (-1, "-0.000001"),
        (-8059489, "-8.059489"),
        (10**15, "1000000000"),
        (1_000_100, "1.0001"),
    ],
)
def test_format_plain_examples(micro: int, text: str) -> None:
    assert format_plain(micro) == text


@given(micros)
def test_micro_to_decimal_is_exact(micro: int) -> None:
    assert micro_to_decimal(micro) * MICRO_PER_UNIT == micro


# ---- format_money ------------------------------------------------------------------------


@given(micros, currencies)
@example(8059489, "USD")
@example(15_000, "USD")
@example(25_000, "USD")
@example(-15_000, "EUR")
@example(-5_000, "EUR")
@example(-1, "USD")
def test_format_money_rounds_half_up_to_cents(micro: int, currency: str) -> None:
    assert format_money(micro, currency) == expected_money(micro, currency)


@given(micros, currencies)
def test_format_money_shows_the_code_never_a_symbol(micro: int, currency: str) -> None:
    text = format_money(micro, currency)
    assert text.endswith(f" {currency}")
    assert not any(sym in text for sym in "$€£¥")


@pytest.mark.parametrize(
    ("micro", "currency", "text"),
    [
        (8059489, "USD", "8.06 USD"),
        (8059489, "EUR", "8.06 EUR"),
        (125_000, "USD", "0.13 USD"),  # 0.125: half up -> 0.13
        (135_000, "USD", "0.14 USD"),
        (2_505_000, "USD", "2.51 USD"),
        (2_515_000, "USD", "2.52 USD"),
        (2_505_001, "USD", "2.51 USD"),  # just above half rounds up
        (10_250, "USD", "0.01 USD"),
        (0, "USD", "0.00 USD"),
        (-4_999, "USD", "0.00 USD"),  # rounds to zero: no "-0.00"
        (-5_000, "USD", "-0.01 USD"),
        (-15_000, "USD", "-0.02 USD"),
        (-8059489, "USD", "-8.06 USD"),
        (1_234_567_890_000, "USD", "1,234,567.89 USD"),
    ],
)
def test_format_money_examples(micro: int, currency: str, text: str) -> None:
    assert format_money(micro, currency) == text


@pytest.mark.parametrize(
    ("micro", "places", "text"),
    [(8059489, 0, "8 USD"), (8059489, 3, "8.059 USD"), (8059489, 6, "8.059489 USD")],
)
def test_format_money_places(micro: int, places: int, text: str) -> None:
    assert format_money(micro, "USD", places) == text


# ---- parse_amount ------------------------------------------------------------------------


@given(micros)
def test_parse_amount_accepts_decimal_with_six_places(micro: int) -> None:
    assert parse_amount(Decimal(micro).scaleb(-6)) == micro


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_parse_amount_of_an_int_is_whole_units(units: int) -> None:
    assert parse_amount(units) == units * MICRO_PER_UNIT


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=999_999),
    st.integers(min_value=1, max_value=9),
    st.sampled_from(["", "-"]),
)
def test_parse_amount_refuses_a_seventh_decimal(
    whole: int, frac: int, seventh: int, sign: str
) -> None:
    with pytest.raises(ValueError, match=r"^amount has more than 6 decimal places$"):
        parse_amount(f"{sign}{whole}.{frac:06d}{seventh}")


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("5.00", 5_000_000),
        (" 5.5 ", 5_500_000),
        ("8.059489", 8059489),
        ("0.1000000", 100_000),  # trailing zeros past six places are still exact
        ("-2.25", -2_250_000),
        ("1e3", 1_000_000_000),
        (5, 5_000_000),
        (0.1, 100_000),  # a YAML float means its shortest repr, exactly
        (5.5, 5_500_000),
        (Decimal("0.000001"), 1),
    ],
)
def test_parse_amount_examples(text: str | int | float | Decimal, micro: int) -> None:
    result = parse_amount(text)
    assert result == micro
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    ["NaN", "nan", "sNaN", "inf", "-inf", "Infinity", float("nan"), float("inf"),
     float("-inf"), Decimal("NaN"), Decimal("Infinity")],
)  # fmt: skip
def test_parse_amount_refuses_non_finite(value: str | float | Decimal) -> None:
    with pytest.raises(ValueError, match=r"^amount must be a finite number$"):
        parse_amount(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_amount_refuses_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match=r"^expected an amount, got a boolean$"):
        parse_amount(value)


@pytest.mark.parametrize("value", ["", "abc", "5 USD", "$5", "1,5", "0x10"])
def test_parse_amount_refuses_non_numbers(value: str) -> None:
    with pytest.raises(ValueError, match=r"^not a number: "):
        parse_amount(value)


@pytest.mark.parametrize("value", ["0.0000001", "1.1234567", 1e-7, 0.12345678])
def test_parse_amount_refuses_more_than_six_places(value: str | float) -> None:
    with pytest.raises(ValueError, match=r"^amount has more than 6 decimal places$"):
        parse_amount(value)
