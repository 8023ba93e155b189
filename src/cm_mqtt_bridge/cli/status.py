"""`status` output (text and JSON), and the one-shot poll of every account behind it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TextIO

import aiohttp

from ..config.settings import Config
from ..core.clock import Clock, SystemClock
from ..core.model import Snapshot, UsageState, Window, WindowUsage
from ..core.money import format_money, format_plain, round_display
from ..crossmodel.client import ApiError
from ..crossmodel.fetch import fetch_snapshot, make_client
from ..exits import EXIT_OK, EXIT_UPSTREAM

log = logging.getLogger(__name__)


def _window_text(w: WindowUsage, currency: str) -> str:
    return (
        f"{format_money(w.cost_micro, currency)} · {w.total_tokens:,} tokens · "
        f"{w.request_count:,} requests"
    )


def render_status(account_name: str, account_id: str, snap: Snapshot) -> str:
    c = snap.currency
    # Balance and Available are rounded; Holds is shown as their difference, so the three
    # lines always add up (it differs from the exact holds by less than a cent).
    balance, available = round_display(snap.balance_micro), round_display(snap.available_micro)
    rows = [
        ("Balance", format_money(balance, c)),
        ("Holds", format_money(balance - available, c)),
        ("Available", format_money(available, c)),
    ]
    if snap.usage is not None:
        rows += [
            ("Today", _window_text(snap.usage.daily, c)),
            ("Week", _window_text(snap.usage.weekly, c)),
            ("Month", _window_text(snap.usage.monthly, c)),
        ]
    else:
        rows.append(("Usage", f"unavailable ({snap.usage_state.value}: {snap.usage_error})"))
    lines = [f"CrossModel · {account_name} ({account_id})"]
    lines += [f"  {label:<10} {value}" for label, value in rows]
    return "\n".join(lines)


def _window_json(w: WindowUsage) -> dict[str, Any]:
    return {
        "cost_micro": w.cost_micro,
        "cost": format_plain(w.cost_micro),
        "prompt_tokens": w.prompt_tokens,
        "completion_tokens": w.completion_tokens,
        "total_tokens": w.total_tokens,
        "request_count": w.request_count,
        "success_count": w.success_count,
    }


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    usage = snap.usage
    return {
        "currency": snap.currency,
        "balance_micro": snap.balance_micro,
        "holds_micro": snap.holds_micro,
        "available_micro": snap.available_micro,
        "balance": format_plain(snap.balance_micro),
        "holds": format_plain(snap.holds_micro),
        "available": format_plain(snap.available_micro),
        "fetched_at": snap.fetched_at.isoformat(),
        "usage_state": snap.usage_state.value,
        "usage_error": snap.usage_error,
        "usage": None if usage is None else {w.api: _window_json(usage.get(w)) for w in Window},
    }


async def poll_all(config: Config, clock: Clock) -> list[tuple[str, str, Snapshot | ApiError]]:
    results: list[tuple[str, str, Snapshot | ApiError]] = []
    async with aiohttp.ClientSession() as session:

        async def one(acc_index: int) -> Snapshot | ApiError:
            acc = config.accounts[acc_index]
            client = make_client(session, acc, config.poll, clock, retry_log_level=logging.DEBUG)
            try:
                return await fetch_snapshot(
                    acc.id, client, clock, usage_deadline=config.poll.usage_timeout
                )
            except ApiError as exc:
                return exc

        outcomes = await asyncio.gather(*(one(i) for i in range(len(config.accounts))))
    for acc, outcome in zip(config.accounts, outcomes, strict=True):
        results.append((acc.id, acc.name, outcome))
    return results


def cmd_status(config: Config, as_json: bool, out: TextIO) -> int:
    results = asyncio.run(poll_all(config, SystemClock()))
    failed = any(isinstance(r, ApiError) for _, _, r in results)
    if as_json:
        doc = {
            "accounts": [
                {"id": acc_id, "name": name, "ok": True, **snapshot_json(r)}
                if isinstance(r, Snapshot)
                else {
                    "id": acc_id,
                    "name": name,
                    "ok": False,
                    "api_status": r.status,
                    "error": str(r),
                }
                for acc_id, name, r in results
            ]
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        blocks = []
        for acc_id, name, r in results:
            if isinstance(r, Snapshot):
                blocks.append(render_status(name, acc_id, r))
            else:
                blocks.append(f"CrossModel · {name} ({acc_id})\n  Error      {r.status}: {r}")
        out.write("\n\n".join(blocks) + "\n")
    if any(isinstance(r, Snapshot) and r.usage_state != UsageState.OK for _, _, r in results):
        log.warning("usage figures were not available for every account (balance is current)")
    return EXIT_UPSTREAM if failed else EXIT_OK
