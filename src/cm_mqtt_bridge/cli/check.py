"""`cm-mqtt-bridge check`: does it work? One line per check (the config, each account's API,
the broker, each notification channel), ok or FAILED with the reason, then a summary.

Nothing is published and no notice is sent: channels are asked whether they would accept one
(ntfy: the server answers and the token is accepted; a webhook: something answers at its
path; Apprise: every URL parses). Discovery payloads are printed only with `--show-discovery`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TextIO

import aiohttp

from ..config.notify import NtfyConfig, WebhookConfig
from ..config.settings import Config
from ..core.clock import SystemClock
from ..core.model import Snapshot
from ..core.money import format_money
from ..core.neterror import describe
from ..exits import EXIT_OK, EXIT_UPSTREAM
from ..ha.discovery import device_payload
from ..ha.entities import entities_for
from ..ha.topics import Topics
from ..notify.channels import USER_AGENT
from ..service.publisher import Publisher
from .status import poll_all

TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


@dataclass
class Report:
    out: TextIO
    failed: list[str]
    count: int = 0

    def line(self, name: str, detail: str, ok: bool = True) -> None:
        self.count += 1
        if not ok:
            self.failed.append(name)
        self.out.write(f"{'ok' if ok else 'FAILED':<7} {name}: {detail}\n")


async def broker_problem(config: Config) -> str | None:
    """None when a connection to the broker works, else the reason."""
    topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    publisher = Publisher(config.mqtt, topics, SystemClock(), subscriptions=(), on_message=ignore)
    return await publisher.probe()


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], method: str = "GET"
) -> int:
    try:
        async with session.request(
            method,
            url,
            headers={"User-Agent": USER_AGENT, **headers},
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            allow_redirects=False,
        ) as resp:
            return resp.status
    except TimeoutError:
        raise CheckFailed(f"no answer within {TIMEOUT:g} s") from None
    except aiohttp.ClientError as exc:
        raise CheckFailed(describe(exc)) from None


async def check_ntfy(session: aiohttp.ClientSession, cfg: NtfyConfig) -> str:
    if cfg.token is None:
        status = await _get(session, f"{cfg.url}/v1/health", {})
        if status != 200:
            raise CheckFailed(f"HTTP {status} from {cfg.url}/v1/health: is it an ntfy server?")
        return "the server answers (no token configured)"
    auth = {"Authorization": f"Bearer {cfg.token.get_secret_value()}"}
    status = await _get(session, f"{cfg.url}/v1/account", auth)
    if status in (401, 403):
        raise CheckFailed(f"the access token was rejected (HTTP {status})")
    if status != 200:
        raise CheckFailed(f"HTTP {status} from {cfg.url}/v1/account: is it an ntfy server?")
    return "the server answers and accepts the access token"


# What a receiver's answer to HEAD says about it. Many receivers implement only POST: 405 (not
# allowed) and 501 (not implemented, as Python's http.server answers) still show one is there,
# as do 401/403 (it wants credentials a POST would carry). 404/410 mean a mistyped path.
WEBHOOK_THERE = frozenset({401, 403, 405, 501})
WEBHOOK_MISSING = frozenset({404, 410})


async def check_webhook(session: aiohttp.ClientSession, cfg: WebhookConfig) -> str:
    # A HEAD sends no notice.
    status = await _get(session, cfg.url, {}, method="HEAD")
    if status in WEBHOOK_MISSING:
        raise CheckFailed(f"nothing at this path (HTTP {status} to HEAD)")
    if 300 <= status < 400:
        # The notice is POSTed without following redirects: it would not arrive.
        raise CheckFailed(f"HTTP {status} to HEAD: a redirect; give the final URL")
    if status >= 500 and status not in WEBHOOK_THERE:
        raise CheckFailed(f"HTTP {status} to HEAD: the receiver has a server error")
    return f"the receiver answers (HTTP {status} to HEAD)"


def check_apprise(urls: list[str]) -> str:
    import apprise  # optional extra; config validation checked it is installed

    bad = [i for i, url in enumerate(urls, 1) if not apprise.Apprise().add(url)]
    if bad:
        # The URLs carry tokens: name them by position, never print them.
        raise CheckFailed(f"URL {', '.join(map(str, bad))} of {len(urls)} does not parse")
    return f"{len(urls)} URL{'s' if len(urls) > 1 else ''} parse{'s' if len(urls) == 1 else ''}"


async def run_check(config: Config, out: TextIO, *, show_discovery: bool, source: str) -> int:
    report = Report(out, [])
    n = len(config.accounts)
    report.line("config", f"valid ({source}, {n} account{'s' if n > 1 else ''})")
    results = await poll_all(config, SystemClock())
    currencies: dict[str, str | None] = {}
    for (acc_id, _name, result), acc in zip(results, config.accounts, strict=True):
        if isinstance(result, Snapshot):
            currencies[acc_id] = result.currency
            balance = format_money(result.balance_micro, result.currency)
            report.line(f"account {acc_id}", f"{acc.api_url} answers, balance {balance}")
        else:
            currencies[acc_id] = None
            report.line(f"account {acc_id}", f"{result.status}: {result}", ok=False)
    where = f"{config.mqtt.host}:{config.mqtt.port}"
    problem = await broker_problem(config)
    report.line(f"broker {where}", problem or "connected", ok=problem is None)
    notify = config.notify
    async with aiohttp.ClientSession() as session:
        if notify.ntfy is not None:
            name = f"ntfy {notify.ntfy.url}/{notify.ntfy.topic}"
            try:
                report.line(name, await check_ntfy(session, notify.ntfy))
            except CheckFailed as exc:
                report.line(name, str(exc), ok=False)
        if notify.webhook is not None:
            name = f"webhook {notify.webhook.url}"
            try:
                report.line(name, await check_webhook(session, notify.webhook))
            except CheckFailed as exc:
                report.line(name, str(exc), ok=False)
    if notify.apprise:
        try:
            report.line("apprise", check_apprise([u.get_secret_value() for u in notify.apprise]))
        except CheckFailed as exc:
            report.line("apprise", str(exc), ok=False)
    if show_discovery:
        _print_discovery(config, currencies, out)
    if report.failed:
        out.write(
            f"\n{len(report.failed)} of {report.count} checks FAILED: {', '.join(report.failed)}\n"
        )
        return EXIT_UPSTREAM
    hint = "" if show_discovery else " (--show-discovery prints what Home Assistant would get)"
    out.write(f"\nAll {report.count} checks passed{hint}.\n")
    return EXIT_OK


def _print_discovery(config: Config, currencies: dict[str, str | None], out: TextIO) -> None:
    topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)
    out.write("\nDiscovery (dry run, nothing published):\n")
    for acc in config.accounts:
        payload = device_payload(
            account_id=acc.id,
            account_name=acc.name,
            topics=topics,
            currency=currencies[acc.id],
            qos=config.mqtt.qos,
            entities=entities_for(acc.alerts.rules()),
        )
        out.write(f"\n{topics.device(acc.id)} (retained)\n{json.dumps(payload, indent=2)}\n")
