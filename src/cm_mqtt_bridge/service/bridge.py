"""The `run` service: wires the parts together and keeps them running.

Data flows one way: poller -> Snapshot -> AccountView (reducer) -> alert engine -> render ->
Publisher. This module only builds those parts and supervises their tasks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from .. import __version__
from ..config.settings import Config
from ..core.clock import Clock, SystemClock
from ..core.timings import DEFAULTS, Timings
from ..crossmodel.fetch import make_client
from ..ha.discovery import MAX_DISCOVERY_BYTES, read_back
from ..ha.topics import Kind, Topics
from ..notify.channels import DeliveryError, Wiring, build_channels
from ..notify.dispatch import Dispatcher
from ..store.db import DB_NAME, AsyncStore, Store, StoreError, in_thread
from .alerting import AlertAccount, AlertEngine
from .health import HealthServer, accounts_report, build_report
from .inbound import Births, Commands
from .lockfile import AlreadyRunning, DataDirLock
from .metrics import Metrics
from .publisher import Publisher, PublishError, RetainedRead
from .runtime import AccountRuntime, Shared
from .supervisor import Supervisor

log = logging.getLogger(__name__)
FILES_CHECK = 30.0  # seconds between checks that the database files are still ours
COMPACT_EVERY = 3600.0  # seconds between history thinnings


class StartupError(Exception):
    """The service cannot start (e.g. its data directory is not writable)."""


class Bridge:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        timings: Timings = DEFAULTS,
    ) -> None:
        """`timings`: every wait and backoff of every part (tests pass `Timings.fast()`)."""
        self.config = config
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.timings = timings
        self.topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)
        self.metrics = Metrics(enabled=config.health.enabled)
        self.accounts: dict[str, AccountRuntime] = {}
        self.births = Births(self.clock, self.rng, self._resend, delay=timings.birth_delay)
        self.commands = Commands(self.topics, self.accounts, self.births, self.clock)
        self.publisher = Publisher(
            config.mqtt,
            self.topics,
            self.clock,
            subscriptions=self.topics.subscriptions,
            on_message=self.commands.handle,
            # What an earlier run announced (retained), to remove what is gone since.
            read_retained=RetainedRead(
                self.topics.device_wildcard, MAX_DISCOVERY_BYTES, self._on_readback
            ),
            on_connection=self._on_connection,
            timings=timings,
            rng=self.rng,
            metrics=self.metrics,
        )
        self.supervisor = Supervisor(
            self.clock,
            backoff=timings.restart_backoff,
            on_restart=self.metrics.restarted,
        )
        self.health: HealthServer | None = None
        self.store: AsyncStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.engine: AlertEngine | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # Each poll runs /credits and /usage at once; a few spare connections keep alert
        # deliveries (ntfy, webhook) from queueing behind a busy polling cycle.
        connector = aiohttp.TCPConnector(limit=2 * self.config.poll.max_concurrency + 4)
        lock = DataDirLock(self.config.data_dir)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            raise StartupError(f"data_dir: {exc}") from None
        except OSError as exc:
            raise StartupError(
                f"data_dir: cannot use {self.config.data_dir}: {exc.strerror or exc}"
            ) from None
        try:
            # No session-wide timeout: the client's own deadline bounds each exchange, and
            # aiohttp's default (300 s) would be a second timer on every request.
            no_timeout = aiohttp.ClientTimeout()
            async with aiohttp.ClientSession(connector=connector, timeout=no_timeout) as session:
                self.store = AsyncStore(
                    await self._open_store(), deadline=self.timings.store_deadline
                )
                log.info("starting version %s: %s", __version__, self.config.summary())
                try:
                    await self._start_health()
                    await self._start(session, self.store)
                    await stop.wait()
                    log.info("shutting down")
                    if self.dispatcher is not None:
                        # Before the publisher closes: the MQTT channel may be one of them.
                        await self.dispatcher.drain(self.timings.drain_seconds)
                    await self.publisher.close()
                finally:
                    self.births.cancel()
                    await self.commands.close()
                    await self.supervisor.stop()
                    if self.health is not None:
                        await self.health.stop()
                    self.store.close()
        finally:
            lock.release()

    async def _open_store(self) -> Store:
        path = self.config.data_dir / DB_NAME
        now = self.clock.now()

        def open_store() -> tuple[Store, int]:
            store = Store.open(path, now, lock_wait=self.timings.lock_wait)
            return store, store.unreadable_samples() if store.ready else 0

        try:
            # Opening reads the whole file once (quick_check): bounded like every store call.
            store, skipped = await in_thread(
                open_store,
                self.timings.lock_wait + self.timings.store_deadline,
                f"the state database {path}",
            )
        except StoreError as exc:
            raise StartupError(f"data_dir: {exc}") from None
        if skipped:
            log.warning(
                "skipping %d history row(s) in %s that are not as the bridge wrote them",
                skipped,
                path,
            )
        if not store.ready:
            # A backup, a VACUUM or a sqlite3 shell: values need no database, so start, and
            # catch up with the alert bookkeeping once the lock is gone.
            log.warning(
                "the state database %s is locked by another program; starting anyway, alerts "
                "are kept and evaluated once it is free",
                path,
            )
        return store

    async def _start_health(self) -> None:
        h = self.config.health
        if not h.enabled:
            return
        server = HealthServer(h.host, h.port, self.health_report, self.metrics, self.clock)
        try:
            await server.start()
        except OSError as exc:
            raise StartupError(f"health: cannot listen on {h.host}:{h.port}: {exc}") from None
        self.health = server

    async def _start(self, session: aiohttp.ClientSession, store: AsyncStore) -> None:
        async def publish(topic: str, payload: bytes) -> None:
            try:
                await self.publisher.publish_now(topic, payload)
            except PublishError as exc:
                raise DeliveryError(str(exc)) from None

        wiring = Wiring(session, publish, self.topics.alerts)
        channels = build_channels(self.config.notify, wiring)
        dispatcher = Dispatcher(
            store,
            channels,
            self.clock,
            timings=self.timings,
            on_refused=self.metrics.refused,
        )
        self.dispatcher = dispatcher
        cfg = self.config
        engine = AlertEngine(
            store,
            [AlertAccount(a.id, a.name, a.alerts) for a in cfg.accounts],
            self.clock,
            dispatcher.names,
        )
        self.engine = engine
        await engine.load()  # if the store does not answer, each account loads when it can
        shared = Shared(
            poll=cfg.poll,
            concurrency=asyncio.Semaphore(cfg.poll.max_concurrency),
            clock=self.clock,
            rng=self.rng,
            timings=self.timings,
            topics=self.topics,
            publisher=self.publisher,
            qos=cfg.mqtt.qos,
            metrics=self.metrics,
            engine=engine,
            on_notices=dispatcher.wake,
            spread=len(cfg.accounts) > 1,
        )
        for acc in cfg.accounts:
            client = make_client(session, acc, cfg.poll, self.clock)
            self.accounts[acc.id] = AccountRuntime(acc, client, shared)
        # Each account announces its device after its first poll (see AccountRuntime).
        self.publisher.set(self.topics.bridge_status, "online", Kind.STATUS)
        keep = self.supervisor.start
        keep("publisher", self.publisher.run)
        for channel in channels:
            keep(f"alerts:{channel.name}", _bind(dispatcher.run_channel, channel))
        keep("housekeeping", self._housekeeping)
        if self.health is not None:
            keep("health", self.health.serve)
        for runtime in self.accounts.values():
            keep(f"poll:{runtime.id}", runtime.run)
            keep(f"watch:{runtime.id}", runtime.watch)

    async def _housekeeping(self) -> None:
        """Check that the database files are still ours; thin the history once an hour."""
        store = self.store
        assert store is not None
        compact_at = self.clock.monotonic() + COMPACT_EVERY
        while True:
            await self.clock.sleep(FILES_CHECK)
            await store.check_files()
            if self.clock.monotonic() < compact_at:
                continue
            try:
                await store.call(Store.compact, self.clock.now())
            except StoreError:
                continue  # logged by the store; the next check tries again
            compact_at = self.clock.monotonic() + COMPACT_EVERY
            if self.engine is not None:
                self.engine.history_changed()

    # ---- callbacks from the publisher -------------------------------------------------------

    def _on_connection(self, connected: bool) -> None:
        self.metrics.mqtt_connected(connected)
        if connected and self.dispatcher is not None:
            # Alerts that waited for the broker go out now, not after their backoff.
            self.dispatcher.resume("mqtt")

    async def _on_readback(self, retained: dict[str, bytes]) -> None:
        """Compare what an earlier run announced with what is configured now."""
        gone, found = read_back(retained, self.topics, self.accounts)
        for topic in gone:
            self.publisher.set(topic, b"", Kind.DISCOVERY, once=True)
        for account_id, announced in found.items():
            self.accounts[account_id].output.announced(announced)

    def _resend(self) -> None:
        self.metrics.ha_resends.inc()
        self.publisher.resend(Kind.STATUS, Kind.DISCOVERY, Kind.AVAILABILITY, Kind.STATE)

    # ---- health ----------------------------------------------------------------------------

    def health_report(self) -> dict[str, Any]:
        return build_report(
            version=__version__,
            connected=self.publisher.connected.is_set(),
            in_sync=self.publisher.in_sync(),
            accounts=accounts_report(self.accounts.values(), self.config.poll, self.clock),
            tasks=self.supervisor.problems(),
            store_problem=self.store.problem if self.store else None,
            alerts_pending=sum(self.dispatcher.pending.values()) if self.dispatcher else 0,
        )


def _bind(fn: Callable[[Any], Any], arg: Any) -> Callable[[], Any]:
    return lambda: fn(arg)


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:
        # Its default action killed the bridge without a word or its offline status. Under
        # systemd or Docker a SIGHUP comes from a closed terminal; with no reload to offer, a
        # clean stop like SIGTERM's is what that terminal's user expects.
        log.info("SIGHUP (terminal closed?): stopping; start the bridge again to apply changes")
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, hangup)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    return remove


async def run_service(config: Config) -> None:
    stop = asyncio.Event()
    remove = install_signal_handlers(stop)
    try:
        await Bridge(config).run(stop)
    finally:
        remove()
