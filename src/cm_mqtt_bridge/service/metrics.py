"""Prometheus metrics of one bridge (its own registry, so several bridges never collide)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..core.model import Snapshot, Window
from ..core.money import micro_to_decimal

if TYPE_CHECKING:
    from prometheus_client import Gauge


class Tally(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Count:
    """A counter without labels while prometheus_client is not loaded (what `total` reads)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Metrics:
    mqtt_messages: Tally
    mqtt_connections: Tally
    ha_resends: Tally

    def __init__(self, *, enabled: bool = True) -> None:
        # Off when nothing serves /metrics (no health endpoint): prometheus_client is not even
        # imported (about 1.5 MiB of RSS), only the three bridge-wide counters are kept, and
        # the labelled series (about 6 KB and a few µs per account and poll) are not recorded.
        self.enabled = enabled
        if not enabled:
            self.mqtt_messages, self.mqtt_connections, self.ha_resends = (
                _Count(),
                _Count(),
                _Count(),
            )
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter(
            "cm_bridge_polls", "Polls of /credits by result", ["account", "result"], registry=r
        )
        self.latency = Histogram(
            "cm_bridge_poll_seconds",
            "Time for a poll's /credits answer",
            ["account"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # Gauges are floats: exact money stays in MQTT and the CLI; this is for graphs.
        self.balance = Gauge(
            "cm_bridge_balance", "Wallet balance", ["account", "currency"], registry=r
        )
        self.available = Gauge(
            "cm_bridge_available", "Balance minus holds", ["account", "currency"], registry=r
        )
        self.spend = Gauge(
            "cm_bridge_spend",
            "Spend in the current window",
            ["account", "currency", "window"],
            registry=r,
        )
        self.connected = Gauge("cm_bridge_mqtt_connected", "1 while connected", registry=r)
        self.restarts = Counter(
            "cm_bridge_task_restarts",
            "Restarts of a background task after it failed",
            ["task"],
            registry=r,
        )
        self.alert_failed = Counter(
            "cm_bridge_alert_failed",
            "Alert notices a receiver refused for good (HTTP 4xx): not retried",
            ["channel"],
            registry=r,
        )

        self.mqtt_messages = Counter(
            "cm_bridge_mqtt_messages",
            "MQTT messages published: state, discovery and alert events",
            registry=r,
        )
        self.mqtt_connections = Counter(
            "cm_bridge_mqtt_connections",
            "Connections made to the broker: the first and each reconnect",
            registry=r,
        )
        self.ha_resends = Counter(
            "cm_bridge_ha_resends",
            "Discovery and state resent after Home Assistant restarted",
            registry=r,
        )

        # Per account: its currency and that currency's gauges.
        self._gauges: dict[str, tuple[str, Gauge, Gauge, tuple[Gauge, ...]]] = {}

    def restarted(self, task: str) -> None:
        if self.enabled:
            self.restarts.labels(task).inc()

    def refused(self, channel: str) -> None:
        if self.enabled:
            self.alert_failed.labels(channel).inc()

    def mqtt_connected(self, connected: bool) -> None:
        if self.enabled:
            self.connected.set(1 if connected else 0)

    def poll(self, account: str, result: str, seconds: float) -> None:
        if not self.enabled:
            return
        self.polls.labels(account, result).inc()
        if result == "ok":
            self.latency.labels(account).observe(seconds)

    def snapshot(self, snap: Snapshot) -> None:
        if not self.enabled:
            return
        account, cur = snap.account_id, snap.currency
        gauges = self._gauges.get(account)
        if gauges is None or gauges[0] != cur:
            if gauges is not None:
                # The account's currency changed: its old series would stay at their last
                # value beside the new ones.
                old = gauges[0]
                self.balance.remove(account, old)
                self.available.remove(account, old)
                for w in Window:
                    self.spend.remove(account, old, w.api)
            # Looking a labelled child up costs more than setting it: once per account.
            gauges = self._gauges[account] = (
                cur,
                self.balance.labels(account, cur),
                self.available.labels(account, cur),
                tuple(self.spend.labels(account, cur, w.api) for w in Window),
            )
        _, balance, available, spend = gauges
        balance.set(float(micro_to_decimal(snap.balance_micro)))
        available.set(float(micro_to_decimal(snap.available_micro)))
        if snap.usage is not None:
            for window, gauge in zip(Window, spend, strict=True):
                gauge.set(float(micro_to_decimal(snap.usage.get(window).cost_micro)))

    def total(self, counter: str) -> float:
        """A counter without labels, by its name after `cm_bridge_` (e.g. "mqtt_connections")."""
        if not self.enabled:
            count = getattr(self, counter)
            assert isinstance(count, _Count)
            return count.value
        return self.registry.get_sample_value(f"cm_bridge_{counter}_total") or 0.0

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        if not self.enabled:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
