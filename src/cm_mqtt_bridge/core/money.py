"""Exact money: integer micro units (1 unit = 1,000,000 micro), converted through Decimal."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICRO_PER_UNIT = 1_000_000
_MICRO = Decimal(MICRO_PER_UNIT)


def micro_to_decimal(micro: int) -> Decimal:
    """Exact value in currency units (8059489 -> Decimal('8.059489'))."""
    return Decimal(micro).scaleb(-6)


def format_plain(micro: int) -> str:
    """Plain decimal string for MQTT states: exact, no exponent, trailing zeros trimmed.

    Home Assistant needs a number it can parse (never '8.06 USD'); keeping all six places
    means no rounding happens before HA's own display precision.
    """
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_UNIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def round_display(micro: int, places: int = 2) -> int:
    """`micro` rounded for display to `places`, half away from zero, as a wallet shows money
    (0.125 -> 0.13): the exact value stays in JSON and on MQTT."""
    quantum = Decimal(1).scaleb(-places)
    value = micro_to_decimal(micro).quantize(quantum, rounding=ROUND_HALF_UP)
    return int(value.scaleb(6))


def format_money(micro: int, currency: str, places: int = 2, *, trim: bool = False) -> str:
    """Human text, rounded half-up (away from zero) to `places`: 8059489, 'USD' -> '8.06 USD'.

    `trim` drops trailing zeros beyond the second place (4999999, 6 places -> '4.999999',
    5000000 -> '5.00')."""
    quantum = Decimal(1).scaleb(-places)
    value = micro_to_decimal(micro).quantize(quantum, rounding=ROUND_HALF_UP)
    if value.is_zero():
        value = abs(value)  # -0.004 rounds to 0.00, never "-0.00"
    text = f"{value:,.{places}f}"
    if trim and places > 2:
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    return f"{text} {currency}"


def parse_amount(text: str | int | float | Decimal) -> int:
    """An amount in currency units ('5.00', 5, Decimal) -> integer micro units.

    Floats are accepted only through their shortest repr (YAML gives floats for `5.5`), so
    `0.1` means exactly 0.1. More than six decimal places is an error, not a silent rounding.
    """
    if isinstance(text, bool):
        raise ValueError("expected an amount, got a boolean")
    try:
        value = Decimal(repr(text)) if isinstance(text, float) else Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {str(text)[:40]!r}") from None
    if not value.is_finite():
        raise ValueError("amount must be a finite number")
    micro = value * _MICRO
    if micro != micro.to_integral_value():
        raise ValueError("amount has more than 6 decimal places")
    return int(micro)


# A unit placeholder: the account's ISO 4217 code, known after its first poll.
CURRENCY = "<currency>"
