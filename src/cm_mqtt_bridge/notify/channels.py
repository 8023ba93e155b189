"""Channels that deliver a notice: MQTT (Home Assistant event + plain topic), ntfy, a generic
webhook, and Apprise URLs (optional extra). Each raises DeliveryError when it could not deliver;
the dispatcher keeps the notice in the outbox and tries again later, with the same notice id,
unless the error is a RefusedError: the receiver said no for good (HTTP 4xx but 408 and 429).

A timeout is not proof the receiver did not get it: a receiver that stalls and then processes
the request gets the retry as well. The client timeout (30 s by default, per channel) is
therefore generous, and every copy carries the notice id (ntfy's X-Message-Id, the webhook's
X-CM-Bridge-Id) so a receiver can drop the second one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp

from .. import __version__
from ..config.notify import NotifyConfig, NtfyConfig, WebhookConfig
from ..core.neterror import describe
from ..core.redact import redact, shorten

USER_AGENT = f"cm-mqtt-bridge/{__version__}"
NTFY_PRIORITY = {"min": "1", "low": "2", "default": "3", "high": "4", "urgent": "5"}


class DeliveryError(Exception):
    pass


class RefusedError(DeliveryError):
    """The receiver refused the notice itself (HTTP 4xx other than 408 and 429): sending it
    again would only be refused again."""


PERMANENT = frozenset(range(400, 500)) - {408, 429}


class Channel(Protocol):
    name: str

    async def deliver(self, notice: dict[str, Any]) -> None: ...


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: dict[str, str],
    timeout: float,
    secrets: Sequence[str] = (),
) -> None:
    try:
        async with session.post(
            url,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status >= 300:
                body = (await resp.content.read(300)).decode("utf-8", "replace")
                text = shorten(redact(body, secrets), 120) or "no reason given"
                error = RefusedError if resp.status in PERMANENT else DeliveryError
                raise error(f"HTTP {resp.status}: {text}")
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(redact(describe(exc), secrets)) from None


def header_text(text: str) -> str:
    """`text` as an HTTP header value that survives any character: HTTP carries only
    latin-1 (a "☕" would arrive as "?", "ü" as "Ã¼"), so anything else is sent as an
    RFC 2047 encoded word, which ntfy decodes."""
    if text.isascii():
        return text
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode('ascii')}?="


class NtfyChannel:
    name = "ntfy"

    def __init__(self, session: aiohttp.ClientSession, cfg: NtfyConfig) -> None:
        self._session = session
        self._cfg = cfg

    async def deliver(self, notice: dict[str, Any]) -> None:
        cfg = self._cfg
        tags = list(notice.get("tags") or cfg.tags)
        headers = {
            "Title": header_text(str(notice["title"])),
            "Priority": NTFY_PRIORITY[str(notice.get("priority") or cfg.priority)],
            "Tags": header_text(",".join(tags)),
            "User-Agent": USER_AGENT,
            "X-Message-Id": str(notice["id"]),
        }
        secrets: list[str] = []
        if cfg.token is not None:
            headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
            secrets.append(cfg.token.get_secret_value())
        await _post(
            self._session,
            f"{cfg.url}/{cfg.topic}",
            data=str(notice["message"]).encode(),
            headers=headers,
            timeout=cfg.timeout,
            secrets=secrets,
        )


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    name = "webhook"

    def __init__(self, session: aiohttp.ClientSession, cfg: WebhookConfig) -> None:
        self._session = session
        self._cfg = cfg

    async def deliver(self, notice: dict[str, Any]) -> None:
        body = json.dumps(notice, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-CM-Bridge-Id": str(notice["id"]),
        }
        if self._cfg.secret is not None:
            headers["X-CM-Bridge-Signature"] = sign(self._cfg.secret.get_secret_value(), body)
        await _post(
            self._session, self._cfg.url, data=body, headers=headers, timeout=self._cfg.timeout
        )


class AppriseChannel:
    name = "apprise"

    def __init__(self, urls: Sequence[str]) -> None:
        import apprise  # optional extra; config validation checked it is installed

        self._apprise = apprise.Apprise()
        for url in urls:
            self._apprise.add(url)
        self._secrets = list(urls)

    async def deliver(self, notice: dict[str, Any]) -> None:
        try:
            ok = await self._apprise.async_notify(
                body=str(notice["message"]), title=str(notice["title"])
            )
        except Exception as exc:  # Apprise plugins raise anything
            raise DeliveryError(redact(str(exc), self._secrets)) from None
        if not ok:
            raise DeliveryError("Apprise reported a failed delivery")


class MqttChannel:
    """Publishes the notice (QoS 1, not retained) where HA's event entity and any subscriber
    read it. Succeeds only once the broker acknowledged it."""

    name = "mqtt"

    def __init__(
        self, publish: Callable[[str, bytes], Awaitable[None]], topic_for: Callable[[str], str]
    ) -> None:
        self._publish = publish
        self._topic_for = topic_for

    async def deliver(self, notice: dict[str, Any]) -> None:
        payload = json.dumps(notice, separators=(",", ":")).encode()
        await self._publish(self._topic_for(str(notice["account"])), payload)


def build_channels(
    notify: NotifyConfig,
    session: aiohttp.ClientSession,
    publish: Callable[[str, bytes], Awaitable[None]],
    topic_for: Callable[[str], str],
) -> list[Channel]:
    """MQTT always (HA's event entity reads it), then every configured push service."""
    channels: list[Channel] = [MqttChannel(publish, topic_for)]
    if notify.ntfy is not None:
        channels.append(NtfyChannel(session, notify.ntfy))
    if notify.webhook is not None:
        channels.append(WebhookChannel(session, notify.webhook))
    if notify.apprise:
        channels.append(AppriseChannel([u.get_secret_value() for u in notify.apprise]))
    return channels
