"""The `run` service: pollers per account, one MQTT publisher, HA birth and refresh handling.

Data flows one way: poll -> Snapshot -> AccountView -> (state document, discovery) -> Publisher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp
import aiomqtt

from . import __version__
from .alerts.dispatch import Dispatcher
from .alerts.engine import SETTABLE, AlertEngine, ThresholdError
from .alerts.notifiers import (
    AppriseChannel,
    Channel,
    DeliveryError,
    MqttChannel,
    NtfyChannel,
    WebhookChannel,
)
from .alerts.store import DB_NAME, Store
from .api import ApiError, CrossModelClient
from .clock import Clock, SystemClock, wait_event
from .config import AccountConfig, Config, PollConfig
from .discovery import Topics, announced_components, announced_currency, device_payload
from .entities import entities_for
from .health import HealthServer
from .metrics import Metrics
from .publisher import Kind, Publisher
from .snapshot import Snapshot, UsageState, fetch_snapshot
from .state import (
    AccountView,
    active_alerts,
    plain_values,
    same_values,
    settle_forecast,
    state_document,
)

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 3600.0


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False)


def make_client(
    session: aiohttp.ClientSession, acc: AccountConfig, poll: PollConfig, clock: Clock
) -> CrossModelClient:
    return CrossModelClient(
        session,
        base_url=acc.api_url,
        api_key=acc.api_key.get_secret_value(),
        clock=clock,
        credits_timeout=poll.credits_timeout,
        usage_timeout=poll.usage_timeout,
        retries=poll.retries,
    )


class StartupError(Exception):
    """The service cannot start (e.g. its data directory is not writable)."""


@dataclass
class Account:
    """Runtime state of one account; only the service mutates it."""

    cfg: AccountConfig
    client: CrossModelClient
    view: AccountView = field(default_factory=AccountView)
    currency: str | None = None
    doc: dict[str, Any] | None = None
    last_success: float | None = None  # monotonic time of the last good /credits
    last_success_at: datetime | None = None
    last_poll_start: float | None = None
    fresh: bool = False
    retry_after: float | None = None
    removed: dict[str, str] = field(default_factory=dict)
    refresh: asyncio.Event = field(default_factory=asyncio.Event)
    polls: int = 0


class Bridge:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        readback_seconds: float = 3.0,
        birth_delay: tuple[float, float] = (0.5, 3.0),
        dispatch_backoff: float = 5.0,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)
        self.birth_delay = birth_delay
        self.dispatch_backoff = dispatch_backoff
        self.accounts: dict[str, Account] = {}
        self.polls_done = 0  # completed polls, all accounts (benchmarks, tests)
        self._sem = asyncio.Semaphore(config.poll.max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        base = self.topics.base
        self.publisher = Publisher(
            config.mqtt,
            self.topics,
            self.clock,
            subscriptions=[self.topics.ha_status, f"{base}/+/+/set", f"{base}/refresh/set"],
            on_message=self.on_message,
            on_readback=self.on_readback,
            on_connect=self._on_connect,
            readback_seconds=readback_seconds,
            rng=self.rng,
        )
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self.store: Store | None = None
        self.engine: AlertEngine | None = None
        self.dispatcher: Dispatcher | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def _on_connect(self) -> None:
        # Alerts that waited for the broker go out now, not after their backoff.
        if self.dispatcher is not None:
            try:
                self.dispatcher.resume("mqtt")
            except sqlite3.Error as exc:
                log.error("outbox not readable (%s); MQTT alerts wait for the next retry", exc)

    async def run(self, stop: asyncio.Event) -> None:
        # Each poll runs /credits and /usage at once; a few spare connections keep alert
        # deliveries (ntfy, webhook) from queueing behind a busy polling cycle.
        connector = aiohttp.TCPConnector(limit=2 * self.config.poll.max_concurrency + 4)
        async with aiohttp.ClientSession(connector=connector) as session:
            path = self.config.data_dir / DB_NAME
            try:
                self.store = Store(path)
            except (OSError, sqlite3.Error) as exc:
                msg = f"data_dir: cannot open the state database {path}: {exc}"
                raise StartupError(msg) from None
            try:
                await self._start_health()
                self._start(session, self.store)
                await stop.wait()
                log.info("shutting down")
                await self.publisher.close()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self.health is not None:
                    await self.health.stop()
                self.store.close()

    async def _start_health(self) -> None:
        h = self.config.health
        if not h.enabled:
            return
        server = HealthServer(h.host, h.port, self.health_report, self.metrics)
        try:
            await server.start()
        except OSError as exc:
            raise StartupError(f"health: cannot listen on {h.host}:{h.port}: {exc}") from None
        self.health = server

    def _start(self, session: aiohttp.ClientSession, store: Store) -> None:
        self.dispatcher = Dispatcher(
            store, self._channels(session), self.clock, backoff_base=self.dispatch_backoff
        )
        self.engine = AlertEngine(store, self.config.accounts, self.clock, self.dispatcher.names)
        for acc_cfg in self.config.accounts:
            self.accounts[acc_cfg.id] = Account(
                acc_cfg, make_client(session, acc_cfg, self.config.poll, self.clock)
            )
        self.publisher.set(self.topics.bridge_status, "online", Kind.STATUS)
        for acc in self.accounts.values():
            self._set_discovery(acc)
        self._spawn(self.publisher.run())
        self._spawn(self.dispatcher.run())
        self._spawn(self._housekeeping())
        for acc in self.accounts.values():
            self._spawn(self._poller(acc))

    def _channels(self, session: aiohttp.ClientSession) -> list[Channel]:
        async def publish(topic: str, payload: bytes) -> None:
            try:
                await self.publisher.publish_now(topic, payload)
            except aiomqtt.MqttError as exc:
                raise DeliveryError(str(exc)) from None

        channels: list[Channel] = [MqttChannel(publish, self.topics.alerts)]
        notify = self.config.notify
        if notify.ntfy is not None:
            channels.append(NtfyChannel(session, notify.ntfy))
        if notify.webhook is not None:
            channels.append(WebhookChannel(session, notify.webhook))
        if notify.apprise:
            channels.append(AppriseChannel([u.get_secret_value() for u in notify.apprise]))
        return channels

    async def _housekeeping(self) -> None:
        while True:
            await self.clock.sleep(3600)
            if self.store is not None:
                removed = self.store.compact(self.clock.now())
                log.debug("history compaction removed %d rows", removed)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    # ---- polling -------------------------------------------------------------------------

    async def _poller(self, acc: Account) -> None:
        poll = self.config.poll
        if len(self.accounts) > 1 and poll.jitter:
            # Spread accounts so they do not poll in lockstep.
            await self.clock.sleep(self.rng.uniform(0, poll.jitter))
        while True:
            if acc.last_poll_start is not None:
                # At most one poll per min_refresh_interval: a refresh inside the window is
                # deferred to its end, and several collapse into one.
                wait = acc.last_poll_start + poll.min_refresh_interval - self.clock.monotonic()
                if wait > 0:
                    await self.clock.sleep(wait)
            acc.refresh.clear()
            acc.last_poll_start = self.clock.monotonic()
            async with self._sem:
                try:
                    await self.poll_once(acc)
                except Exception:
                    # Whatever went wrong, this account keeps being polled.
                    log.exception("%s: poll failed unexpectedly", acc.cfg.id)
            self.polls_done += 1
            delay = poll.interval + self.rng.uniform(0, poll.jitter)
            if acc.retry_after is not None:
                # Honour Retry-After, but an absurd one must not stop polling (and alerts).
                delay = max(delay, min(acc.retry_after, MAX_RETRY_AFTER))
            await self._idle(acc, acc.last_poll_start + delay)

    async def _idle(self, acc: Account, until: float) -> None:
        """Wait for the next poll or a refresh, marking the account stale when its time comes."""
        while True:
            now = self.clock.monotonic()
            if now >= until:
                return
            timeout = until - now
            stale_at = self._stale_at(acc)
            if acc.fresh and stale_at is not None:
                timeout = min(timeout, max(0.0, stale_at - now))
            if await wait_event(self.clock, acc.refresh, timeout):
                return
            self.check_stale(acc)

    def _stale_at(self, acc: Account) -> float | None:
        if acc.last_success is None:
            return None
        return acc.last_success + self.config.poll.stale_after_s

    def check_stale(self, acc: Account) -> None:
        stale_at = self._stale_at(acc)
        if acc.fresh and stale_at is not None and self.clock.monotonic() >= stale_at:
            log.warning(
                "%s: no good data for %d s; values now unavailable",
                acc.cfg.id,
                self.config.poll.stale_after_s,
            )
            acc.fresh = False
            self._set_availability(acc)

    async def poll_once(self, acc: Account) -> None:
        acc.polls += 1
        started = self.clock.monotonic()
        try:
            snap = await fetch_snapshot(
                acc.cfg.id,
                acc.client,
                self.clock,
                usage_deadline=self.config.poll.usage_timeout,
                on_balance=lambda s: self._apply_partial(acc, s),
            )
        except ApiError as exc:
            self.metrics.poll(acc.cfg.id, exc.status, self.clock.monotonic() - started)
            self._apply_error(acc, exc)
            return
        except Exception as exc:
            # Never let a surprise kill the poller; the next poll tries again.
            log.exception("%s: unexpected error while polling", acc.cfg.id)
            self.metrics.poll(acc.cfg.id, "internal_error", self.clock.monotonic() - started)
            self._apply_error(acc, ApiError(f"internal error: {type(exc).__name__}"))
            return
        self.metrics.poll(acc.cfg.id, "ok", self.clock.monotonic() - started)
        self.metrics.snapshot(snap)
        self.apply_snapshot(acc, snap, partial=False)

    async def _apply_partial(self, acc: Account, snap: Snapshot) -> None:
        # The balance is known while /usage is still running: publish it now.
        self.apply_snapshot(acc, snap, partial=True)

    def apply_snapshot(self, acc: Account, snap: Snapshot, *, partial: bool) -> None:
        view = replace(acc.view, snapshot=snap, api_status="ok", connected=True, error=None)
        if snap.usage is not None:
            view = replace(
                view, usage=snap.usage, usage_at=snap.fetched_at, usage_state=UsageState.OK
            )
        elif not partial:
            view = replace(view, usage_state=snap.usage_state)
        acc.retry_after = None
        acc.last_success = self.clock.monotonic()
        acc.last_success_at = self.clock.now()
        if not partial:
            view = self._observe(acc, view, record=True)
        acc.view = view
        if not acc.fresh:
            acc.fresh = True
            self._set_availability(acc)
        if snap.currency != acc.currency:
            if acc.currency is not None:
                log.warning(
                    "%s: currency changed from %s to %s; discovery republished with the new unit",
                    acc.cfg.id,
                    acc.currency,
                    snap.currency,
                )
            acc.currency = snap.currency
            self._set_discovery(acc)
        self._set_state(acc)

    def _apply_error(self, acc: Account, exc: ApiError) -> None:
        log.warning("%s: poll failed (%s): %s", acc.cfg.id, exc.status, exc)
        view = replace(acc.view, api_status=exc.status, connected=False, error=str(exc))
        acc.view = self._observe(acc, view, record=False)
        acc.retry_after = exc.retry_after
        if acc.last_success is None:
            self._set_availability(acc)
        self._set_state(acc)

    def _observe(self, acc: Account, view: AccountView, *, record: bool) -> AccountView:
        if self.engine is None:
            return view
        try:
            status, notices = self.engine.observe(
                acc.cfg.id, view, last_success=acc.last_success_at, record=record
            )
        except sqlite3.Error as exc:
            # Nothing was committed, so nothing is lost: the rules run again next poll.
            log.error(
                "%s: alert state not saved (%s); alerts wait for the next poll", acc.cfg.id, exc
            )
            return view
        if notices and self.dispatcher is not None:
            self.dispatcher.wake()
        return replace(view, alerts=status)

    # ---- publishing ----------------------------------------------------------------------

    def _set_availability(self, acc: Account) -> None:
        self.publisher.set(
            self.topics.availability(acc.cfg.id),
            "online" if acc.fresh else "offline",
            Kind.AVAILABILITY,
        )

    def _set_state(self, acc: Account) -> None:
        doc = settle_forecast(acc.doc, state_document(acc.view))
        if same_values(acc.doc, doc):
            return
        acc.doc = doc
        self.publisher.set(self.topics.state(acc.cfg.id), _dumps(doc), Kind.STATE)
        for key, value in plain_values(doc).items():
            self.publisher.set(self.topics.value(acc.cfg.id, key), value, Kind.STATE)
        if acc.cfg.alerts.rule_names():
            self.publisher.set(
                self.topics.alerts_active(acc.cfg.id), _dumps(active_alerts(acc.view)), Kind.STATE
            )

    def discovery_for(self, acc: Account) -> dict[str, Any]:
        return device_payload(
            account_id=acc.cfg.id,
            account_name=acc.cfg.name,
            topics=self.topics,
            currency=acc.currency,
            qos=self.config.mqtt.qos,
            entities=entities_for(acc.cfg.alerts.rule_names()),
            removed=acc.removed,
        )

    def _set_discovery(self, acc: Account) -> None:
        self.publisher.set(
            self.topics.device(acc.cfg.id), _dumps(self.discovery_for(acc)), Kind.DISCOVERY
        )
        # A removal ({"p": …}) goes out once, in this payload; later payloads leave it out.
        acc.removed = {}

    # ---- health --------------------------------------------------------------------------

    def poll_budget(self) -> float:
        """Seconds within which a healthy account has a good poll: two intervals plus what
        the retries of one poll may take."""
        p = self.config.poll
        backoff = sum(min(60.0, 2.0**i) for i in range(p.retries))
        return 2 * p.interval + p.jitter + (p.retries + 1) * p.credits_timeout + backoff

    def health_report(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        budget = self.poll_budget()
        connected = self.publisher.connected.is_set()
        self.metrics.connected.set(1 if connected else 0)
        accounts: dict[str, Any] = {}
        for acc in self.accounts.values():
            ok = acc.last_success is not None and now - acc.last_success <= budget
            accounts[acc.cfg.id] = {
                "ok": ok,
                "fresh": acc.fresh,
                "api_status": acc.view.api_status,
                "last_success": acc.last_success_at.isoformat() if acc.last_success_at else None,
                "last_error": acc.view.error,
                "polls": acc.polls,
            }
        return {
            "healthy": connected and all(a["ok"] for a in accounts.values()),
            "broker_connected": connected,
            "alerts_pending": self.store.pending() if self.store is not None else 0,
            "version": __version__,
            "accounts": accounts,
        }

    # ---- incoming ------------------------------------------------------------------------

    async def on_readback(self, retained: dict[str, bytes]) -> None:
        """Compare what an earlier run announced with what is configured now."""
        by_topic = {self.topics.device(a): a for a in self.accounts}
        for topic, payload in retained.items():
            if not payload:
                continue
            try:
                doc = json.loads(payload)
            except (ValueError, RecursionError):  # not ours, maybe hostile: skip it
                continue
            if not isinstance(doc, dict):
                continue
            announced = announced_components(doc)
            if announced is None or not self._is_ours(doc):
                continue
            acc_id = by_topic.get(topic)
            if acc_id is None:
                log.info("removing device for account no longer configured (%s)", topic)
                self.publisher.set(topic, b"", Kind.DISCOVERY, once=True)
                continue
            acc = self.accounts[acc_id]
            if acc.currency is None:
                acc.currency = announced_currency(doc)
            current = set(self.discovery_for(acc)["cmps"])
            acc.removed = {k: p for k, p in announced.items() if k not in current}
            self._set_discovery(acc)

    def _is_ours(self, doc: dict[str, Any]) -> bool:
        # Several bridges may share a broker: only touch devices under our base topic.
        cmps = doc.get("cmps")
        prefix = self.topics.base + "/"
        if not isinstance(cmps, dict):
            return False
        return any(
            isinstance(c, dict) and str(c.get("state_topic", "")).startswith(prefix)
            for c in cmps.values()
        )

    async def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.ha_status:
            if payload.strip().lower() == b"online":
                self._spawn(self._ha_birth())
            return
        if topic == self.topics.refresh_all:
            for each in self.accounts.values():
                each.refresh.set()
            return
        parts = topic.split("/")
        base_len = len(self.topics.base.split("/"))
        if len(parts) != base_len + 3 or parts[-1] != "set":
            return
        acc_id, command = parts[base_len], parts[base_len + 1]
        acc = self.accounts.get(acc_id)
        if acc is None:
            log.warning("command for unknown account %r ignored", acc_id[:40])
        elif command == "refresh":
            log.info("%s: refresh requested", acc_id)
            acc.refresh.set()
        elif command in SETTABLE:
            self._set_threshold(acc, command, payload)
        else:
            log.warning("%s: unknown command %r ignored", acc_id, command[:40])

    def _set_threshold(self, acc: Account, key: str, payload: bytes) -> None:
        assert self.engine is not None
        try:
            value = self.engine.set_threshold(acc.cfg.id, key, payload)
        except ThresholdError as exc:
            log.warning("%s: rejected threshold from MQTT: %s", acc.cfg.id, exc)
            return
        log.info("%s: %s set to %s from Home Assistant", acc.cfg.id, key, value)
        acc.view = self._observe(acc, acc.view, record=False)
        self._set_state(acc)

    async def _ha_birth(self) -> None:
        # HA subscribes after its birth message; a short random delay spreads the load.
        await self.clock.sleep(self.rng.uniform(*self.birth_delay))
        log.info("Home Assistant restarted: resending discovery and state")
        self.publisher.resend(Kind.STATUS, Kind.DISCOVERY, Kind.AVAILABILITY, Kind.STATE)


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove


async def run_service(config: Config) -> None:
    stop = asyncio.Event()
    remove = install_signal_handlers(stop)
    try:
        await Bridge(config).run(stop)
    finally:
        remove()
