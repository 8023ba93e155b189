"""Strict wire models for CrossModel's /credits and /usage answers.

Integers must be JSON integers: strings, floats, booleans and null are refused rather than
coerced, because a wallet value that changed type is a broken answer, not a number.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

# 10^15 micro = one billion currency units: anything beyond is an absurd answer.
_ABSURD = 10**15
Micro = Annotated[StrictInt, Field(ge=-_ABSURD, le=_ABSURD)]
Count = Annotated[StrictInt, Field(ge=0, le=_ABSURD)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


def _currency(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("currency must be a string")
    code = value.strip().upper()
    if not code:
        raise ValueError("currency is empty")
    if not (code.isascii() and code.isalpha() and len(code) <= 8):
        raise ValueError("currency is not a currency code")
    return code


Currency = Annotated[str, BeforeValidator(_currency)]


class CreditsWire(_Wire):
    currency: Currency
    balance_micro: Micro
    uncollected_micro: Annotated[StrictInt, Field(ge=0, le=_ABSURD)]


class WindowWire(_Wire):
    cost_micro: Count
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count
    request_count: Count
    success_count: Count | None = None


class UsageWire(_Wire):
    currency: Currency
    daily: WindowWire
    weekly: WindowWire
    monthly: WindowWire
