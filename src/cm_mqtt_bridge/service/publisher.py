"""The MQTT side: one connection, a reconnect loop, and a reconciler for retained topics.

Callers say what each retained topic should hold (`set`); the publisher sends only what this
connection has not sent yet, in priority order (bridge status, discovery, availability, state).
A reconnect starts a fresh connection record, so everything is republished after a broker
restart; an unchanged value is never sent twice on one connection. Non-retained messages
(alerts) go through `publish_now`, which fails without a connection so the outbox keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config.settings import MqttConfig
from ..core.clock import Clock, backoff
from ..core.neterror import describe_broker
from ..core.timings import DEFAULTS, Timings
from ..ha.topics import Kind, Topics
from .metrics import Metrics

log = logging.getLogger(__name__)

IN_FLIGHT = 20  # paho's default limit of QoS > 0 messages in flight
# The largest packet (MQTT 5) the broker may send us; it drops bigger ones, so anyone allowed to
# publish on a topic we read cannot make us hold 100 MB. Far above what we read legitimately:
# commands and HA's birth are bytes, what a `RetainedRead` keeps is bounded by its `max_bytes`.
MAX_PACKET_BYTES = 1024 * 1024


class _QuietPending(logging.Filter):
    # aiomqtt warns once more than `pending_calls_threshold` publishes await their ack (see
    # Broker.client); a backlog of alert events while the broker stalls must not flood the log.
    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


_MQTT_LOG = logging.getLogger("cm_mqtt_bridge.mqtt")
_MQTT_LOG.addFilter(_QuietPending())


Payload = str | bytes


@dataclass(slots=True)
class _Entry:
    kind: Kind
    payload: Payload  # with a `source`: the digest of the payload, which is not kept
    once: bool = False  # e.g. a device removal: send once, then forget
    # Gives the payload again, the same bytes, when it must be sent: a large payload that is
    # rarely sent (discovery) need not stay in memory for every account.
    source: Callable[[], Payload] | None = None
    # What this connection last published on the topic (its digest, with a `source`): one
    # field here instead of a second topic-keyed dict.
    sent: Payload | None = None

    def data(self) -> Payload:
        return self.payload if self.source is None else self.source()


def _as_bytes(payload: Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def _digest(payload: Payload) -> bytes:
    return hashlib.blake2b(_as_bytes(payload), digest_size=16).digest()


class PublishError(Exception):
    """A message could not be published (no connection, or the broker did not take it)."""


MessageHandler = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetainedRead:
    """Read the retained messages under `filter` once, before the first flush of the first
    connection, and hand them to `handler` ({topic: payload}). A payload is kept only up to
    `max_bytes` + 1 bytes, so the handler can tell one that is too long without holding it."""

    filter: str
    max_bytes: int
    handler: Callable[[dict[str, bytes]], Awaitable[None]]


class Broker:
    """How to connect to the broker: the client's options, and MQTT 5 until the broker
    refuses it (then 3.1.1)."""

    def __init__(self, cfg: MqttConfig, topics: Topics) -> None:
        self._cfg = cfg
        self._topics = topics
        self.v5 = cfg.protocol == "5"

    def _tls(self) -> aiomqtt.TLSParameters | None:
        if not self._cfg.tls:
            return None
        return aiomqtt.TLSParameters(
            ca_certs=str(self._cfg.ca_file) if self._cfg.ca_file else None,
            certfile=str(self._cfg.certfile) if self._cfg.certfile else None,
            keyfile=str(self._cfg.keyfile) if self._cfg.keyfile else None,
            cert_reqs=ssl.CERT_NONE if self._cfg.tls_insecure else ssl.CERT_REQUIRED,
        )

    def client(self, *, probe: bool = False) -> aiomqtt.Client:
        """The bridge's connection; a `probe` (the `check` command) gets its own client id and
        no Will, so it never takes over a running bridge's session or says it is offline."""
        cfg = self._cfg
        v5 = self.v5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.MaximumPacketSize = MAX_PACKET_BYTES
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=f"{cfg.client_id}-check-{uuid.uuid4().hex[:8]}" if probe else cfg.client_id,
            logger=_MQTT_LOG,
            keepalive=cfg.keepalive,
            will=None
            if probe
            else aiomqtt.Will(self._topics.bridge_status, "offline", qos=1, retain=True),
            tls_params=self._tls(),
            tls_insecure=cfg.tls_insecure if cfg.tls else None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A fresh session each time: MQTT 5 says so with clean start (its session expiry
            # defaults to 0), 3.1.1 with clean session.
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            timeout=10,
        )
        # A flush keeps up to IN_FLIGHT publishes awaiting their ack on purpose (and an alert
        # event may come on top): aiomqtt's warning past 10 would be built, then filtered, for
        # most publishes of a busy flush.
        client.pending_calls_threshold = 2 * IN_FLIGHT
        return client

    def fall_back(self, exc: BaseException) -> bool:
        """A broker without MQTT 5 (an old Mosquitto, Aedes, VerneMQ by default) answers the
        CONNECT with "unsupported protocol version": speak 3.1.1 to it from now on, once."""
        if not (self.v5 and isinstance(exc, aiomqtt.MqttCodeError) and exc.rc in (1, 132)):
            return False
        self.v5 = False
        log.warning(
            "MQTT broker %s:%d does not speak MQTT 5; using MQTT 3.1.1 (without the client-side "
            'message size bound; set mqtt.protocol: "3.1.1" to skip this try)',
            self._cfg.host,
            self._cfg.port,
        )
        return True

    async def probe(self) -> str | None:
        """None when a connection to the broker works, else the reason (`check`)."""
        for _ in range(2):
            try:
                async with self.client(probe=True):
                    return None
            except aiomqtt.MqttError as exc:
                if not self.fall_back(exc):
                    return describe_broker(exc, self._cfg.host)
        return None  # not reached: the second try is 3.1.1, which cannot fall back


class Publisher:
    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        clock: Clock,
        *,
        subscriptions: Iterable[str],
        on_message: MessageHandler,
        read_retained: RetainedRead | None = None,
        on_connection: Callable[[bool], None] | None = None,
        timings: Timings = DEFAULTS,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._cfg = cfg
        self.metrics = metrics or Metrics(enabled=False)
        self.broker = Broker(cfg, topics)
        self._topics = topics
        self._clock = clock
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._read_retained = read_retained
        self._on_connection = on_connection
        self._readback_seconds = timings.readback_seconds
        self._reconnect = timings.reconnect_backoff
        self._rng = rng or random.Random()
        self._desired: dict[str, _Entry] = {}
        # Topics that may differ from what this connection sent (an ordered set): a flush
        # looks at these only, not at every retained topic.
        self._unsent: dict[str, None] = {}
        self._dirty = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._readback_done = False
        self._readback: dict[str, bytes] = {}
        self._retained_commands = 0  # on this connection
        self._barrier = asyncio.Event()
        self._barrier_topic = topics.readback(uuid.uuid4().hex)
        self._stopping = False
        self._flushing = False
        self.connected = asyncio.Event()

    # ---- what should be on the broker --------------------------------------------------

    def set(
        self,
        topic: str,
        payload: Payload,
        kind: Kind,
        *,
        once: bool = False,
        source: Callable[[], Payload] | None = None,
    ) -> None:
        """What `topic` should hold, kept as given (not encoded: shared with the caller's str).
        With `source`, only a digest: `source()` gives it again until it changes."""
        held = payload if source is None else _digest(payload)
        entry = self._desired.get(topic)
        if entry is None or entry.payload != held or entry.kind != kind:
            sent = None if entry is None else entry.sent
            self._desired[topic] = _Entry(kind, held, once, source, sent)
            self._unsent[topic] = None
            self._dirty.set()

    def resend(self, *kinds: Kind) -> None:
        """Forget that these kinds were sent on this connection (HA restarted and lost them)."""
        for topic, entry in self._desired.items():
            if entry.kind in kinds:
                entry.sent = None
                self._unsent[topic] = None
        self._dirty.set()

    # ---- connection --------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect with capped exponential backoff, until cancelled."""
        failures = 0  # in a row, without a connection between them
        while not self._stopping:
            wait = backoff(*self._reconnect, failures)
            try:
                async with self.broker.client() as client:
                    failures, wait = 0, backoff(*self._reconnect, 0)
                    await self._serve(client)
            except* aiomqtt.MqttError as group:
                exc = group.exceptions[0]
                if self.broker.fall_back(exc):
                    wait = 0.0  # the next try is the older protocol, at once
                elif not self._stopping:
                    log.warning(
                        "MQTT broker %s:%d: %s; reconnecting in %.0f s",
                        self._cfg.host,
                        self._cfg.port,
                        describe_broker(exc, self._cfg.host),
                        wait,
                    )
            except* Exception as group:
                # A bug or a hostile message must not end MQTT for good: log, reconnect.
                log.error(
                    "MQTT connection failed unexpectedly; reconnecting in %.0f s",
                    wait,
                    exc_info=group.exceptions[0],
                )
            finally:
                self._client = None
                if self.connected.is_set():
                    self.connected.clear()
                    if self._on_connection is not None:
                        self._on_connection(False)
            if self._stopping:
                return
            if wait:
                await self._clock.sleep(wait * (0.8 + 0.4 * self._rng.random()))
                failures += 1
            else:
                failures = 0

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._client = client
        for entry in self._desired.values():
            entry.sent = None
        self._unsent = dict.fromkeys(self._desired)
        self._retained_commands = 0
        self.metrics.mqtt_connections.inc()
        log.info("connected to MQTT broker %s:%d", self._cfg.host, self._cfg.port)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(client))
            for topic in self._subscriptions:
                await client.subscribe(topic, qos=1)
            read = self._read_retained
            if not self._readback_done and read is not None:
                # Retained messages are queued to us when we subscribe; a message we send to
                # ourselves afterwards arrives after all of them, so it marks the end.
                await client.subscribe(read.filter, qos=1)
                await client.subscribe(self._barrier_topic, qos=1)
                await client.publish(self._barrier_topic, b"end", qos=1)
                try:
                    await asyncio.wait_for(self._barrier.wait(), self._readback_seconds)
                except TimeoutError:
                    log.debug("retained read-back of %s ended by timeout", read.filter)
                await client.unsubscribe(self._barrier_topic)
                await client.unsubscribe(read.filter)
                self._readback_done = True
                await read.handler(dict(self._readback))
                self._readback.clear()
            self.connected.set()
            self._dirty.set()
            tg.create_task(self._sync(client))
            if self._on_connection is not None:
                self._on_connection(True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == self._barrier_topic:
                self._barrier.set()
                continue
            read = self._read_retained
            if read is not None and message.topic.matches(read.filter):
                if not self._readback_done and message.retain:
                    self._readback[topic] = payload[: read.max_bytes + 1]
                continue
            if message.retain and self._topics.parse_command(topic) is not None:
                self._retained_commands += 1
                _ignored_retained(topic, first=self._retained_commands == 1)
                continue
            try:
                await self._on_message(topic, payload)
            except Exception:
                # A bad command must never take the connection down.
                log.exception("error handling message on %s", topic)

    async def _sync(self, client: aiomqtt.Client) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._flush(client)

    async def _flush(self, client: aiomqtt.Client) -> None:
        self._flushing = True
        todo, self._unsent = self._unsent, {}
        pending = [
            (topic, entry)
            for topic in todo
            if (entry := self._desired.get(topic)) is not None and entry.sent != entry.payload
        ]
        try:
            for kind in Kind:
                batch = [(topic, entry) for topic, entry in pending if entry.kind == kind]
                if batch:
                    # A few workers share one iterator: about as many publishes in flight as
                    # paho allows. Starting thousands at once only queues them, and aiomqtt's
                    # bookkeeping of pending calls then grows with the square of their number.
                    work = iter(batch)
                    workers = min(IN_FLIGHT, len(batch))
                    await asyncio.gather(
                        *(self._publish_from(client, work) for _ in range(workers))
                    )
        finally:
            self._flushing = False

    async def _publish_from(
        self, client: aiomqtt.Client, work: Iterator[tuple[str, _Entry]]
    ) -> None:
        for topic, entry in work:
            await client.publish(topic, entry.data(), qos=self._cfg.qos, retain=True)
            self.metrics.mqtt_messages.inc()
            current = self._desired.get(topic)
            if entry.once and current is entry:
                del self._desired[topic]
            elif current is not None:  # `entry`, or what replaced it meanwhile
                current.sent = entry.payload

    def in_sync(self) -> bool:
        """Connected, and every retained topic holds what it should (the health report)."""
        return (
            self.connected.is_set()
            and not self._dirty.is_set()
            and not self._flushing
            and all(e.sent == e.payload for e in self._desired.values())
        )

    def retained(self) -> list[tuple[str, bytes]]:
        """What the broker should hold, in publish order within each kind."""
        desired = sorted(self._desired.items(), key=lambda i: i[1].kind)
        return [(t, _as_bytes(e.data())) for t, e in desired]

    async def publish_now(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it; raise PublishError
        when there is no connection or the broker did not take it (the caller keeps it)."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise PublishError("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=1, retain=False)
        except aiomqtt.MqttError as exc:
            raise PublishError(str(exc) or type(exc).__name__) from None
        self.metrics.mqtt_messages.inc()

    async def close(self, timeout: float = 2.0) -> None:
        """Say `offline` (clean disconnects do not trigger the Will) and stop reconnecting."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(
                client.publish(self._topics.bridge_status, "offline", qos=1, retain=True), timeout
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish offline status: %s", str(exc) or type(exc).__name__)


def _ignored_retained(topic: str, *, first: bool) -> None:
    """A retained command is stale by the time we (re)connect: applying it would undo what
    was set from Home Assistant since. One line a connection (`first`) says how to clear it."""
    if first:
        log.warning(
            "ignored a retained command on %s (commands count only when sent live; "
            "clear it: mosquitto_pub -r -n -t '%s')",
            topic[:200],
            topic[:200],
        )
    else:
        log.debug("ignored a retained command on %s", topic[:200])
