"""The typed, immutable result of one poll: a `Snapshot`, its `Usage` per `Window`.

Pure data. It imports nothing of HTTP, MQTT or SQLite; every other layer speaks these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Literal, get_args

# unreachable: no answer (network, DNS, timeout); server_error: the server answered HTTP 5xx.
ApiStatus = Literal[
    "ok", "auth_failed", "rate_limited", "unreachable", "server_error", "invalid_response"
]
API_STATUSES: tuple[ApiStatus, ...] = get_args(ApiStatus)


class Window(Enum):
    """A /usage window: its API key, the suffix of its entities and topics, and its label."""

    DAY = ("daily", "today", "today")
    WEEK = ("weekly", "week", "this week")
    MONTH = ("monthly", "month", "this month")

    def __init__(self, api: str, suffix: str, label: str) -> None:
        self.api = api  # key in /usage answers, history columns and budget rule names
        self.suffix = suffix  # entity keys: spend_today, spend_week, spend_month
        self.label = label  # human text: "Spend this week"

    def start(self, at: datetime) -> datetime:
        """Start of the UTC day, ISO week (Monday) or calendar month that contains `at`."""
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        if self is Window.DAY:
            return day
        if self is Window.WEEK:
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)

    def end(self, at: datetime) -> datetime:
        """Start of the next window: when a budget for the window that contains `at` resets."""
        start = self.start(at)
        if self is Window.DAY:
            return start + timedelta(days=1)
        if self is Window.WEEK:
            return start + timedelta(days=7)
        return (start + timedelta(days=32)).replace(day=1)


class UsageState(StrEnum):
    OK = "ok"
    PENDING = "pending"  # balance known, /usage still in flight
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CURRENCY_MISMATCH = "currency_mismatch"


@dataclass(frozen=True, slots=True)
class WindowUsage:
    cost_micro: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    request_count: int
    success_count: int | None

    @property
    def success_rate(self) -> float | None:
        if self.success_count is None or self.request_count == 0:
            return None
        return round(100.0 * self.success_count / self.request_count, 1)


@dataclass(frozen=True, slots=True)
class Usage:
    daily: WindowUsage
    weekly: WindowUsage
    monthly: WindowUsage

    def get(self, window: Window) -> WindowUsage:
        usage: WindowUsage = getattr(self, window.api)
        return usage


@dataclass(frozen=True, slots=True)
class Snapshot:
    account_id: str
    fetched_at: datetime
    currency: str
    balance_micro: int
    holds_micro: int
    usage: Usage | None
    usage_state: UsageState
    usage_error: str | None = None
    usage_retry_after: float | None = None  # /usage asked to be left alone this long (s)

    @property
    def available_micro(self) -> int:
        return self.balance_micro - self.holds_micro
