"""Every timing of the service, in one place: the defaults, and a fast set for tests.

A backoff is (first, cap) in seconds, grown by `clock.backoff`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

Backoff = tuple[float, float]  # (first, cap) seconds


@dataclass(frozen=True, slots=True)
class Timings:
    # How long the start reads back retained discovery an earlier run left.
    readback_seconds: float = 3.0
    # Random delay (min, max) before answering a Home Assistant birth message.
    birth_delay: tuple[float, float] = (0.5, 3.0)
    # One alert's delivery retries (outbox): long, a channel may be down for hours.
    dispatch_backoff: Backoff = (5.0, 300.0)
    # A supervised task that failed is restarted after this.
    restart_backoff: Backoff = (1.0, 60.0)
    # Retries of a state-database call that failed (alert bookkeeping, outbox reads).
    retry_backoff: Backoff = (1.0, 60.0)
    # Reconnects to the MQTT broker.
    reconnect_backoff: Backoff = (1.0, 30.0)
    # The waits between the attempts of one delivery.
    delivery_retry_wait: Backoff = (0.5, 4.0)
    # Seconds a state-database call may take before the store counts as stuck.
    store_deadline: float = 5.0
    # Seconds the start waits for a lock another program holds on the database.
    lock_wait: float = 5.0
    # Seconds alert deliveries in flight may take at a stop.
    drain_seconds: float = 5.0
    # After this many seconds, values go out before a slow alert evaluation finishes.
    evaluation_grace: float = 0.25
    # After this many seconds, the balance goes out before a slow /usage answers.
    partial_grace: float = 0.25
    # Seconds after the start without a poll result before a device is announced anyway
    # (without its money entities: the currency is not known yet).
    discovery_grace: float = 5.0

    @classmethod
    def fast(cls, **changes: Any) -> Timings:
        """Short waits for tests; `changes` override single fields."""
        quick = cls(
            readback_seconds=0.1,
            dispatch_backoff=(0.1, 300.0),
            restart_backoff=(0.1, 0.5),
            retry_backoff=(0.1, 0.5),
            reconnect_backoff=(0.05, 0.2),
            delivery_retry_wait=(0.02, 0.05),
        )
        return replace(quick, **changes)


DEFAULTS = Timings()
