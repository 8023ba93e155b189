"""Building blocks shared by every config section (the top-level config and the alert rules)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .money import parse_amount

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """'15m', '12h', '1d', '30s' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 15m, 12h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(str(value))
        if not match:
            raise ValueError("expected a duration like 30s, 15m, 12h or 1d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def _micro(value: Any) -> int:
    return parse_amount(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Amounts in the account's currency, as decimals in the file; integer micro units inside.
Amount = Annotated[int, BeforeValidator(_micro), Field(ge=0, le=10**15)]


class StrictModel(BaseModel):
    """Every config section: frozen, and unknown (misspelt) options are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
