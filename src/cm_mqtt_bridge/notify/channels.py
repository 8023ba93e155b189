"""The channel registry: every notification channel declared once, in this file.

A channel is its name, its `notify.<name>` option (type and default), how it is built, and
how `check` asks whether it would accept a notice. The `notify:` config section, the channel
list at start, `test-alert` and `check` are all derived from `CHANNELS`; adding a channel
touches this source file only.

Each channel raises DeliveryError when it could not deliver; the dispatcher keeps the notice
in the outbox and tries again later, with the same notice id, unless the error is a
RefusedError: the receiver said no for good (HTTP 4xx but 408 and 429).

A timeout is not proof the receiver did not get it: a receiver that stalls and then processes
the request gets the retry as well. The client timeout (30 s by default, per channel) is
therefore generous, and every copy carries the notice id (ntfy's X-Message-Id, the webhook's
X-CM-Bridge-Id) so a receiver can drop the second one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, Protocol, Self, TypeVar

import aiohttp
from pydantic import AfterValidator, BaseModel, Field, SecretStr, create_model, field_validator

from .. import __version__
from ..core.configbase import Duration, StrictModel
from ..core.neterror import describe
from ..core.notice import Notice
from ..core.redact import redact, shorten

USER_AGENT = f"cm-mqtt-bridge/{__version__}"
NTFY_PRIORITY = {"min": "1", "low": "2", "default": "3", "high": "4", "urgent": "5"}
PROBE_TIMEOUT = 10.0  # `check` waits this long for a receiver's answer


class DeliveryError(Exception):
    """The channel could not deliver (or, asked by `check`, would not accept) a notice."""


class RefusedError(DeliveryError):
    """The receiver refused the notice itself (HTTP 4xx other than 408 and 429): sending it
    again would only be refused again."""


PERMANENT = frozenset(range(400, 500)) - {408, 429}


class Channel(Protocol):
    name: str

    async def deliver(self, notice: Notice) -> None: ...


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a channel may be built with."""

    session: aiohttp.ClientSession
    publish: Callable[[str, bytes], Awaitable[None]]  # MQTT, QoS 1, not retained
    topic_for: Callable[[str], str]  # account id -> its alerts topic


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    # The type of the `notify.<name>` option; None: always on, no option.
    option: Any
    build: Callable[[Any, Wiring], Channel]
    # `check`: a line saying the receiver would accept a notice, without sending one; raises
    # DeliveryError. None: checked elsewhere (MQTT: the broker line).
    probe: Callable[[Any, aiohttp.ClientSession], Awaitable[str]] | None = None
    default: Any = None  # the option's value when not given: the channel is off

    def title(self, cfg: Any) -> str:
        """How `check` names the channel: its options' `label()`, if they have one."""
        label = getattr(cfg, "label", None)
        return str(label()) if callable(label) else self.name


# ---- shared by the HTTP channels ---------------------------------------------------------------

# Long enough that a receiver stalling 20 s still answers the first request: a timeout and
# retry would deliver a second copy to a receiver that did get the first.
DeliveryTimeout = Annotated[Duration, Field(le=300)]


def _check_http_url(url: str) -> str:
    if not re.fullmatch(r"https?://[^\s/@]+(/[^\s]*)?", url):
        raise ValueError("must be an http(s) URL without credentials or spaces")
    return url.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
C = TypeVar("C", bound=StrictModel)


class HttpChannel(Generic[C]):
    """A channel that POSTs each notice to a receiver, with its options."""

    name: str

    def __init__(self, session: aiohttp.ClientSession, cfg: C) -> None:
        self._session = session
        self._cfg = cfg

    @classmethod
    def build(cls, cfg: C, wiring: Wiring) -> Self:
        return cls(wiring.session, cfg)


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout: float,
    data: bytes | None = None,
    secrets: Sequence[str] = (),
) -> tuple[int, str]:
    """The status and, for one of 300 and above, the start of the answer. Redirects are not
    followed: a notice POSTed to a redirect would not arrive."""
    try:
        async with session.request(
            method,
            url,
            data=data,
            headers={"User-Agent": USER_AGENT, **headers},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status < 300:
                return resp.status, ""
            body = (await resp.content.read(300)).decode("utf-8", "replace")
            return resp.status, shorten(redact(body, secrets), 120) or "no reason given"
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(redact(describe(exc), secrets)) from None


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: dict[str, str],
    timeout: float,
    secrets: Sequence[str] = (),
) -> None:
    status, text = await _request(
        session, "POST", url, headers=headers, timeout=timeout, data=data, secrets=secrets
    )
    if status >= 300:
        error = RefusedError if status in PERMANENT else DeliveryError
        raise error(f"HTTP {status}: {text}")


async def _probe(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], method: str = "GET"
) -> int:
    status, _text = await _request(session, method, url, headers=headers, timeout=PROBE_TIMEOUT)
    return status


def header_text(text: str) -> str:
    """`text` as an HTTP header value that survives any character: HTTP carries only
    latin-1 (a "☕" would arrive as "?", "ü" as "Ã¼"), so anything else is sent as an
    RFC 2047 encoded word, which ntfy decodes."""
    if text.isascii():
        return text
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode('ascii')}?="


# ---- MQTT: always on (Home Assistant's event entity reads it) ----------------------------------


class MqttChannel:
    """Publishes the notice (QoS 1, not retained) where HA's event entity and any subscriber
    read it. Succeeds only once the broker acknowledged it."""

    name = "mqtt"

    def __init__(
        self, publish: Callable[[str, bytes], Awaitable[None]], topic_for: Callable[[str], str]
    ) -> None:
        self._publish = publish
        self._topic_for = topic_for

    async def deliver(self, notice: Notice) -> None:
        payload = json.dumps(notice.to_json(), separators=(",", ":")).encode()
        await self._publish(self._topic_for(notice.account_id), payload)


MQTT = ChannelSpec("mqtt", None, lambda _cfg, w: MqttChannel(w.publish, w.topic_for))


# ---- ntfy --------------------------------------------------------------------------------------


class NtfyConfig(StrictModel):
    url: HttpUrl = "https://ntfy.sh"
    topic: str
    token: SecretStr | None = None
    token_file: Path | None = None  # read into `token` by the config loader
    priority: Literal["min", "low", "default", "high", "urgent"] = "high"
    tags: tuple[str, ...] = ("moneybag",)
    timeout: DeliveryTimeout = 30.0

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
            raise ValueError("ntfy topics use letters, digits, '_' and '-' (1-64)")
        return v

    def label(self) -> str:
        return f"ntfy {self.url}/{self.topic}"


class NtfyChannel(HttpChannel[NtfyConfig]):
    name = "ntfy"

    async def deliver(self, notice: Notice) -> None:
        cfg = self._cfg
        headers = {
            "Title": header_text(notice.title),
            "Priority": NTFY_PRIORITY[notice.priority or cfg.priority],
            "Tags": header_text(",".join(notice.tags or cfg.tags)),
            "X-Message-Id": notice.id,
        }
        secrets: list[str] = []
        if cfg.token is not None:
            headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
            secrets.append(cfg.token.get_secret_value())
        await _post(
            self._session,
            f"{cfg.url}/{cfg.topic}",
            data=notice.message.encode(),
            headers=headers,
            timeout=cfg.timeout,
            secrets=secrets,
        )


async def probe_ntfy(cfg: NtfyConfig, session: aiohttp.ClientSession) -> str:
    """The server answers and, when one is configured, accepts the token."""
    if cfg.token is None:
        status = await _probe(session, f"{cfg.url}/v1/health", {})
        if status != 200:
            raise DeliveryError(f"HTTP {status} from {cfg.url}/v1/health: is it an ntfy server?")
        return "the server answers (no token configured)"
    auth = {"Authorization": f"Bearer {cfg.token.get_secret_value()}"}
    status = await _probe(session, f"{cfg.url}/v1/account", auth)
    if status in (401, 403):
        raise DeliveryError(f"the access token was rejected (HTTP {status})")
    if status != 200:
        raise DeliveryError(f"HTTP {status} from {cfg.url}/v1/account: is it an ntfy server?")
    return "the server answers and accepts the access token"


NTFY = ChannelSpec("ntfy", NtfyConfig | None, NtfyChannel.build, probe_ntfy)


# ---- a generic webhook -------------------------------------------------------------------------


class WebhookConfig(StrictModel):
    url: HttpUrl
    secret: SecretStr | None = None
    secret_file: Path | None = None  # read into `secret` by the config loader
    timeout: DeliveryTimeout = 30.0

    def label(self) -> str:
        return f"webhook {self.url}"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel(HttpChannel[WebhookConfig]):
    name = "webhook"

    async def deliver(self, notice: Notice) -> None:
        body = json.dumps(notice.to_json(), sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-CM-Bridge-Id": notice.id}
        if self._cfg.secret is not None:
            headers["X-CM-Bridge-Signature"] = sign(self._cfg.secret.get_secret_value(), body)
        await _post(
            self._session, self._cfg.url, data=body, headers=headers, timeout=self._cfg.timeout
        )


# What a receiver's answer to HEAD says about it. Many receivers implement only POST: 405 (not
# allowed) and 501 (not implemented, as Python's http.server answers) still show one is there,
# as do 401/403 (it wants credentials a POST would carry). 404/410 mean a mistyped path.
WEBHOOK_THERE = frozenset({401, 403, 405, 501})
WEBHOOK_MISSING = frozenset({404, 410})


async def probe_webhook(cfg: WebhookConfig, session: aiohttp.ClientSession) -> str:
    # A HEAD sends no notice.
    status = await _probe(session, cfg.url, {}, method="HEAD")
    if status in WEBHOOK_MISSING:
        raise DeliveryError(f"nothing at this path (HTTP {status} to HEAD)")
    if 300 <= status < 400:
        # The notice is POSTed without following redirects: it would not arrive.
        raise DeliveryError(f"HTTP {status} to HEAD: a redirect; give the final URL")
    if status >= 500 and status not in WEBHOOK_THERE:
        raise DeliveryError(f"HTTP {status} to HEAD: the receiver has a server error")
    return f"the receiver answers (HTTP {status} to HEAD)"


WEBHOOK = ChannelSpec("webhook", WebhookConfig | None, WebhookChannel.build, probe_webhook)


# ---- Apprise (optional extra): a list of URLs --------------------------------------------------


def _apprise_installed(v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    if v and importlib.util.find_spec("apprise") is None:
        raise ValueError(
            "Apprise URLs need the optional extra: pip install 'cm-mqtt-bridge[apprise]'"
        )
    return v


# Apprise URLs carry tokens: treat them as secrets.
AppriseUrls = Annotated[tuple[SecretStr, ...], AfterValidator(_apprise_installed)]


class AppriseChannel:
    name = "apprise"

    def __init__(self, urls: Sequence[str]) -> None:
        import apprise  # optional extra; config validation checked it is installed

        self._apprise = apprise.Apprise()
        for url in urls:
            self._apprise.add(url)
        self._secrets = list(urls)

    @classmethod
    def build(cls, urls: tuple[SecretStr, ...], _wiring: Wiring) -> AppriseChannel:
        return cls([u.get_secret_value() for u in urls])

    async def deliver(self, notice: Notice) -> None:
        try:
            ok = await self._apprise.async_notify(body=notice.message, title=notice.title)
        except Exception as exc:  # Apprise plugins raise anything
            raise DeliveryError(redact(str(exc), self._secrets)) from None
        if not ok:
            raise DeliveryError("Apprise reported a failed delivery")


async def probe_apprise(cfg: tuple[SecretStr, ...], _session: aiohttp.ClientSession) -> str:
    import apprise  # optional extra; config validation checked it is installed

    urls = [u.get_secret_value() for u in cfg]
    bad = [i for i, url in enumerate(urls, 1) if not apprise.Apprise().add(url)]
    if bad:
        # The URLs carry tokens: name them by position, never print them.
        raise DeliveryError(f"URL {', '.join(map(str, bad))} of {len(urls)} does not parse")
    return f"{len(urls)} URL{'s' if len(urls) > 1 else ''} parse{'s' if len(urls) == 1 else ''}"


APPRISE = ChannelSpec("apprise", AppriseUrls, AppriseChannel.build, probe_apprise, default=())


# ---- the registry, and the `notify:` config section generated from it --------------------------

CHANNELS: tuple[ChannelSpec, ...] = (MQTT, NTFY, WEBHOOK, APPRISE)

M = TypeVar("M", bound=BaseModel)


def _secret_values(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return [
            s for name in type(value).model_fields for s in _secret_values(getattr(value, name))
        ]
    if isinstance(value, tuple):
        return [s for item in value for s in _secret_values(item)]
    return []


class NotifyBase(StrictModel):
    def configured(self) -> list[tuple[ChannelSpec, Any]]:
        """Every channel a notice goes to, with its options: MQTT always, then those the
        config sets, in registry order."""
        out = []
        for spec in CHANNELS:
            cfg = None if spec.option is None else getattr(self, spec.name)
            if spec.option is None or cfg != spec.default:
                out.append((spec, cfg))
        return out

    def get(self, model: type[M]) -> M | None:
        """A channel's options by their model, typed: `notify.get(NtfyConfig)`."""
        return next((c for _spec, c in self.configured() if isinstance(c, model)), None)

    def channel_names(self) -> list[str]:
        return [spec.name for spec, _cfg in self.configured()]

    def secrets(self) -> list[str]:
        return [s for _spec, cfg in self.configured() for s in _secret_values(cfg)]


def build_channels(notify: NotifyBase, wiring: Wiring) -> list[Channel]:
    """Every configured channel, in registry order (MQTT first)."""
    return [spec.build(cfg, wiring) for spec, cfg in notify.configured()]


if TYPE_CHECKING:
    NotifyConfig = NotifyBase
else:
    NotifyConfig = create_model(
        "NotifyConfig",
        __base__=NotifyBase,
        **{spec.name: (spec.option, spec.default) for spec in CHANNELS if spec.option is not None},
    )
