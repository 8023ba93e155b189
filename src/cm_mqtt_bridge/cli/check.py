"""`cm-mqtt-bridge check`: does it work? One line per check (the config, each account's API,
the broker, each notification channel), ok or FAILED with the reason, then a summary.

Nothing is published and no notice is sent: each channel's probe (`notify/channels.py`) asks
whether it would accept one (ntfy: the server answers and the token is accepted; a webhook:
something answers at its path; Apprise: every URL parses). Discovery payloads are printed only
with `--show-discovery`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TextIO

import aiohttp

from ..config.settings import Config
from ..core.clock import SystemClock
from ..core.model import Snapshot
from ..core.money import format_money
from ..exits import EXIT_OK, EXIT_UPSTREAM
from ..ha.discovery import device_payload
from ..ha.entities import entities_for
from ..ha.topics import Topics
from ..notify.channels import DeliveryError
from ..service.publisher import Publisher
from .status import poll_all


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
    return await publisher.broker.probe()


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
    async with aiohttp.ClientSession() as session:
        for spec, cfg in config.notify.configured():
            if spec.probe is None:
                continue
            try:
                report.line(spec.title(cfg), await spec.probe(cfg, session))
            except DeliveryError as exc:
                report.line(spec.title(cfg), str(exc), ok=False)
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
