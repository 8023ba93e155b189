"""Durable alert state, thresholds set from Home Assistant, the outbox and history (SQLite).

One WAL database in the data dir. A rule's new state and the notices it produced are written
in ONE transaction: after any crash (kill -9 included) an alert is either not fired yet or
fired with its notices waiting in the outbox, so it is never fired twice and never lost.

`Store` is synchronous (the CLI uses it as is); the service reaches it through `AsyncStore`,
which runs every call on one dedicated thread, so a locked or slow database delays only the
alert bookkeeping, never polling or publishing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from .evaluate import Notice, RuleState
from .history import Sample

log = logging.getLogger(__name__)
T = TypeVar("T")
STORE_RETRY = (1.0, 60.0)  # backoff (first, cap) while the database fails
P = ParamSpec("P")

DB_NAME = "cm_mqtt_bridge.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_state (
    account TEXT NOT NULL, rule TEXT NOT NULL, firing INTEGER NOT NULL, since REAL,
    last_notified REAL, window TEXT, seq INTEGER NOT NULL, PRIMARY KEY (account, rule));
CREATE TABLE IF NOT EXISTS overrides (
    account TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, config_value TEXT,
    PRIMARY KEY (account, key));
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL, channel TEXT NOT NULL, account TEXT NOT NULL, payload TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
    delivered REAL, last_error TEXT, failed REAL, PRIMARY KEY (id, channel));
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, delivered, next_attempt);
CREATE TABLE IF NOT EXISTS samples (
    account TEXT NOT NULL, at REAL NOT NULL, balance INTEGER NOT NULL, holds INTEGER NOT NULL,
    spend_day INTEGER, spend_week INTEGER, spend_month INTEGER, spent_total INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS samples_account_at ON samples (account, at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# History thinning: every poll for 48 h, then one per hour, then one per day; gone after 400 d.
KEEP_ALL = timedelta(hours=48)
KEEP_HOURLY = timedelta(days=30)
KEEP_DAILY = timedelta(days=400)


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: str
    channel: str
    account: str
    payload: dict[str, object]
    attempts: int


class StoreError(Exception):
    """The state database could not be read or written; nothing of that call was kept."""


class Store:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a process crash (our kill -9 case) and cheap.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Only our own process writes; a short wait keeps a stray lock from stalling the loop.
        self._db.execute("PRAGMA busy_timeout=1000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "failed" not in columns:  # a database from before permanent failures existed
            self._db.execute("ALTER TABLE outbox ADD COLUMN failed REAL")

    @classmethod
    def open(cls, path: Path | str, now: datetime | None = None) -> Store:
        """Open (creating it if needed); with `now`, also prove it can be written. Raises
        StoreError naming the file and what to do."""
        try:
            store = cls(path)
            store.verify()
            if now is not None:
                store.check_writable(now)
        except (OSError, sqlite3.Error) as exc:
            hint = ""
            text = str(exc)
            if "readonly" in text or "read-only" in text:
                hint = "; make the file and its directory writable by this user (e.g. chown)"
            elif isinstance(exc, sqlite3.DatabaseError) and "locked" not in text:
                hint = "; move the file aside and the bridge starts with a fresh one"
            raise StoreError(f"cannot open the state database {path}: {text}{hint}") from None
        return store

    def verify(self) -> None:
        """Fail now, not in the middle of a run or an export, when pages are corrupt (a
        header can survive while the tables behind it do not). Reads the whole file once."""
        problem = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            first = " ".join(str(problem).splitlines()[0].split())[:200]
            raise sqlite3.DatabaseError(f"database disk image is malformed ({first})")

    def check_writable(self, now: datetime) -> None:
        """Fail now, not at the first alert, when the database cannot be written (a volume
        owned by another user, a read-only mount)."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('opened', ?)", (now.isoformat(),))

    def close(self) -> None:
        self._db.close()

    # ---- rule state + outbox, atomically ---------------------------------------------------

    def rule_states(self, account: str) -> dict[str, RuleState]:
        rows = self._db.execute(
            "SELECT rule, firing, since, last_notified, window, seq FROM rule_state "
            "WHERE account = ?",
            (account,),
        )
        return {
            rule: RuleState(bool(firing), _dt(since), _dt(last), window, seq)
            for rule, firing, since, last, window, seq in rows
        }

    def commit(
        self,
        account: str,
        changed: Mapping[str, RuleState],
        notices: Sequence[Notice],
        channels: Sequence[str],
        now: datetime,
        sample: Sample | None = None,
    ) -> None:
        """Rule states, their notices and the poll's history sample, all or nothing: a top-up
        measured against a sample is never lost because the sample was saved without it."""
        if not changed and not notices and sample is None:
            return
        with self._tx():
            if sample is not None:
                self.add_sample(account, sample)
            self._db.executemany(
                "INSERT OR REPLACE INTO rule_state VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        account,
                        rule,
                        int(s.firing),
                        _ts(s.since),
                        _ts(s.last_notified),
                        s.window,
                        s.seq,
                    )
                    for rule, s in changed.items()
                ],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (id, channel, account, payload, created, "
                "next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (n.id, ch, account, json.dumps(_payload(n)), now.timestamp(), now.timestamp())
                    for n in notices
                    for ch in channels
                ],
            )

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # ---- outbox ------------------------------------------------------------------------

    def due(self, channel: str, now: datetime, limit: int = 50) -> list[OutboxItem]:
        """What the channel owes, strictly in the order it was written, up to the first item
        still waiting out a backoff: a later notice (a rule's `recovered`) never overtakes an
        earlier one (its `fired`). Permanently failed items are skipped."""
        rows = self._db.execute(
            "SELECT id, channel, account, payload, attempts, next_attempt FROM outbox "
            "WHERE channel = ? AND delivered IS NULL AND failed IS NULL "
            "ORDER BY rowid LIMIT ?",  # the order written, whatever the wall clock did
            (channel, limit),
        )
        out: list[OutboxItem] = []
        for i, c, a, p, n, next_attempt in rows:
            if next_attempt > now.timestamp():
                break
            out.append(OutboxItem(i, c, a, json.loads(p), n))
        return out

    def make_due(self, channel: str, now: datetime) -> int:
        """The channel works (again): everything it still owes is due now, not after backoff."""
        cur = self._db.execute(
            "UPDATE outbox SET next_attempt = ? WHERE channel = ? AND delivered IS NULL "
            "AND failed IS NULL AND next_attempt > ?",
            (now.timestamp(), channel, now.timestamp()),
        )
        return cur.rowcount

    def next_due(self, channel: str) -> datetime | None:
        """When the oldest item the channel owes is due (the others wait behind it)."""
        row = self._db.execute(
            "SELECT next_attempt FROM outbox WHERE channel = ? AND delivered IS NULL "
            "AND failed IS NULL ORDER BY rowid LIMIT 1",
            (channel,),
        ).fetchone()
        return _dt(row[0]) if row else None

    def delivered(self, item: OutboxItem, now: datetime) -> None:
        self._db.execute(
            "UPDATE outbox SET delivered = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ? AND channel = ?",
            (now.timestamp(), item.id, item.channel),
        )

    def failed(self, item: OutboxItem, retry_at: datetime, error: str) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? "
            "WHERE id = ? AND channel = ?",
            (retry_at.timestamp(), error[:500], item.id, item.channel),
        )

    def gave_up(self, item: OutboxItem, now: datetime, error: str) -> None:
        """The receiver refused the notice for good (e.g. HTTP 400): never retried."""
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, failed = ?, last_error = ? "
            "WHERE id = ? AND channel = ?",
            (now.timestamp(), error[:500], item.id, item.channel),
        )

    def pending(self, channel: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM outbox WHERE delivered IS NULL AND failed IS NULL"
        args: tuple[str, ...] = ()
        if channel is not None:
            sql += " AND channel = ?"
            args = (channel,)
        return int(self._db.execute(sql, args).fetchone()[0])

    # ---- thresholds set from Home Assistant ----------------------------------------------

    def overrides(self, account: str) -> dict[str, tuple[str, str | None]]:
        rows = self._db.execute(
            "SELECT key, value, config_value FROM overrides WHERE account = ?", (account,)
        )
        return {key: (value, cfg) for key, value, cfg in rows}

    def set_override(self, account: str, key: str, value: str, config_value: str | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO overrides VALUES (?, ?, ?, ?)",
            (account, key, value, config_value),
        )

    def drop_override(self, account: str, key: str) -> None:
        self._db.execute("DELETE FROM overrides WHERE account = ? AND key = ?", (account, key))

    # ---- history -----------------------------------------------------------------------

    def add_sample(self, account: str, s: Sample) -> None:
        self._db.execute(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account,
                s.at.timestamp(),
                s.balance_micro,
                s.holds_micro,
                s.spend_day_micro,
                s.spend_week_micro,
                s.spend_month_micro,
                s.spent_total_micro,
            ),
        )

    def latest_sample(self, account: str, at_or_before: datetime | None = None) -> Sample | None:
        sql = "SELECT * FROM samples WHERE account = ?"
        args: tuple[object, ...] = (account,)
        if at_or_before is not None:
            sql += " AND at <= ?"
            args += (at_or_before.timestamp(),)
        row = self._db.execute(sql + " ORDER BY at DESC LIMIT 1", args).fetchone()
        return _sample(row) if row else None

    def anchor(self, account: str, at_or_before: datetime) -> tuple[Sample | None, datetime | None]:
        """The last sample at or before a time, and when the next one was taken (until then
        the answer stays the same)."""
        found = self.latest_sample(account, at_or_before)
        row = self._db.execute(
            "SELECT MIN(at) FROM samples WHERE account = ? AND at > ?",
            (account, at_or_before.timestamp()),
        ).fetchone()
        return found, _dt(row[0]) if row else None

    def samples(
        self, account: str | None = None, since: datetime | None = None
    ) -> Iterator[tuple[str, Sample]]:
        sql = "SELECT * FROM samples WHERE 1=1"
        args: tuple[object, ...] = ()
        if account is not None:
            sql += " AND account = ?"
            args += (account,)
        if since is not None:
            sql += " AND at >= ?"
            args += (since.timestamp(),)
        try:
            for row in self._db.execute(sql + " ORDER BY account, at", args):
                yield row[0], _sample(row)
        except sqlite3.Error as exc:  # e.g. pages corrupted past what the open check reads
            raise StoreError(str(exc) or type(exc).__name__) from None

    def compact(self, now: datetime) -> int:
        """Thin old history; returns the number of rows removed."""
        before = self._db.total_changes
        with self._tx():
            for older_than, bucket in ((KEEP_ALL, 3600), (KEEP_HOURLY, 86400)):
                cutoff = (now - older_than).timestamp()
                self._db.execute(
                    "DELETE FROM samples WHERE at < ? AND rowid NOT IN ("
                    "SELECT MIN(rowid) FROM samples WHERE at < ? "
                    "GROUP BY account, CAST(at / ? AS INTEGER))",
                    (cutoff, cutoff, bucket),
                )
            self._db.execute("DELETE FROM samples WHERE at < ?", ((now - KEEP_DAILY).timestamp(),))
            self._db.execute(
                "DELETE FROM outbox WHERE COALESCE(delivered, failed) < ?",
                ((now - timedelta(days=7)).timestamp(),),
            )
        return self._db.total_changes - before


def _sample(row: tuple[Any, ...]) -> Sample:
    _acc, at, balance, holds, day, week, month, total = row
    return Sample(datetime.fromtimestamp(at, UTC), balance, holds, day, week, month, total)


def _payload(n: Notice) -> dict[str, object]:
    return {**n.as_dict(), "priority": n.priority, "tags": list(n.tags)}


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                # A COMMIT that fails (database locked) leaves the transaction open: end it,
                # so the next call starts clean and retries the whole thing.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


class AsyncStore:
    """The store for the event loop: every call runs on one dedicated thread.

    A failing call raises StoreError and is remembered in `problem` (for /healthz) until a
    later call succeeds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cm-store")
        self.problem: str | None = None

    async def call(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`await store.call(Store.commit, …)`: the call, on the store's thread."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._thread, functools.partial(fn, self.store, *args, **kwargs)
            )
        except sqlite3.Error as exc:
            if self.problem is None:
                log.error("alert store: %s (alerts are kept and retried)", exc)
            self.problem = str(exc) or type(exc).__name__
            raise StoreError(self.problem) from None
        if self.problem is not None:
            log.info("alert store works again")
            self.problem = None
        return result

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()
