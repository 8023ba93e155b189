"""`cm-mqtt-bridge history`: the recorded samples as CSV."""

from __future__ import annotations

import csv
from datetime import datetime
from typing import TextIO

from ..config.settings import Config, unknown_account
from ..core.money import format_plain
from ..exits import EXIT_OK, EXIT_UPSTREAM
from ..store.db import DB_NAME, Store, StoreError
from .errors import fail

HISTORY_COLUMNS = (
    "account",
    "time",
    "balance",
    "holds",
    "available",
    "spend_today",
    "spend_week",
    "spend_month",
    "spent_total",
)


def cmd_history(config: Config, account: str | None, since: datetime | None, out: TextIO) -> int:
    path = config.data_dir / DB_NAME
    if not path.exists():
        return fail(f"no history yet: {path} does not exist (run the bridge first)", EXIT_UPSTREAM)
    known = [a.id for a in config.accounts]
    if account is not None and account not in known:
        return fail(unknown_account(account, known))
    try:
        store = Store.open(path)
    except StoreError as exc:
        return fail(str(exc))
    try:
        skipped = store.unreadable_samples()
        if skipped:
            fail(
                f"skipped {skipped} history row(s) in {path} that are not as the bridge wrote "
                "them (a hand edit or a damaged disk?)"
            )
        return _write_history(store, account, since, out)
    except StoreError as exc:  # corrupt beyond what the quick check at open sees
        return fail(
            f"cannot read the state database {path}: {exc}; move the file aside and the "
            "bridge starts with a fresh one"
        )
    finally:
        store.close()


def _plain(m: int | None) -> str:
    return "" if m is None else format_plain(m)


def _write_history(store: Store, account: str | None, since: datetime | None, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for acc_id, s in store.samples(account, since):
        writer.writerow(
            (
                acc_id,
                s.at.isoformat(),
                _plain(s.balance_micro),
                _plain(s.holds_micro),
                _plain(s.balance_micro - s.holds_micro),
                _plain(s.spend_day_micro),
                _plain(s.spend_week_micro),
                _plain(s.spend_month_micro),
                _plain(s.spent_total_micro),
            )
        )
    return EXIT_OK
