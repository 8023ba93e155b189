"""The account as the bridge currently knows it, and the pure reducer that moves it on.

Every change to what is shown comes in as an event; `reduce(view, event)` returns the new view.
Last good values stay after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from .evaluate import AlertStatus
from .model import ApiStatus, Snapshot, Usage, UsageState


@dataclass(frozen=True, slots=True)
class AccountView:
    snapshot: Snapshot | None = None  # last good /credits answer
    usage: Usage | None = None  # last good /usage answer
    usage_at: datetime | None = None
    usage_state: UsageState | None = None
    api_status: ApiStatus | None = None
    connected: bool = False
    error: str | None = None
    alerts: AlertStatus | None = None
    fresh: bool = False  # values younger than the staleness limit: availability online
    last_success_at: datetime | None = None

    @property
    def usage_current(self) -> bool:
        """The usage figures came with the current balance (a full, good poll)."""
        snap = self.snapshot
        return (
            snap is not None
            and self.usage_state == UsageState.OK
            and self.usage_at == snap.fetched_at
        )


@dataclass(frozen=True, slots=True)
class Polled:
    """A good /credits answer; `partial` while /usage is still running."""

    snapshot: Snapshot
    partial: bool = False


@dataclass(frozen=True, slots=True)
class PollFailed:
    status: ApiStatus
    error: str


@dataclass(frozen=True, slots=True)
class AlertsEvaluated:
    status: AlertStatus


@dataclass(frozen=True, slots=True)
class WentStale:
    pass


Event = Polled | PollFailed | AlertsEvaluated | WentStale


def reduce(view: AccountView, event: Event) -> AccountView:
    if isinstance(event, Polled):
        snap = event.snapshot
        new = replace(
            view,
            snapshot=snap,
            api_status="ok",
            connected=True,
            error=None,
            fresh=True,
            last_success_at=snap.fetched_at,
        )
        if snap.usage is not None:
            return replace(
                new, usage=snap.usage, usage_at=snap.fetched_at, usage_state=UsageState.OK
            )
        if not event.partial:
            return replace(new, usage_state=snap.usage_state)
        return new
    if isinstance(event, PollFailed):
        return replace(view, api_status=event.status, connected=False, error=event.error)
    if isinstance(event, AlertsEvaluated):
        return replace(view, alerts=event.status)
    return replace(view, fresh=False)
