"""Durable alert state, thresholds set from Home Assistant, the outbox and history (SQLite).

One WAL database in the data dir. A rule's new state and the notices it produced are written
in ONE transaction: after any crash (kill -9 included) an alert is either not fired yet or
fired with its notices waiting in the outbox, so it is never fired twice and never lost.

`Store` is synchronous (the CLI uses it as is); the service reaches it through `AsyncStore`,
which runs every call on one dedicated thread with a deadline, so a locked, slow or stalled
database (an SD card or NFS share that stops answering) delays only the alert bookkeeping,
never polling or publishing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..core.evaluate import RuleState
from ..core.lifetime import SpendTotal
from ..core.notice import Notice
from ..core.samples import Sample
from ..core.timings import DEFAULTS

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

DB_NAME = "cm_mqtt_bridge.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_state (
    account TEXT NOT NULL, rule TEXT NOT NULL, firing INTEGER NOT NULL, since REAL,
    last_notified REAL, window TEXT, seq INTEGER NOT NULL, step INTEGER,
    PRIMARY KEY (account, rule));
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
CREATE TABLE IF NOT EXISTS spend_total (
    account TEXT PRIMARY KEY, total INTEGER NOT NULL, month_start REAL NOT NULL,
    month_spend INTEGER NOT NULL);
"""
# A history row as we write it; one that is not (a hand edit, bit rot) is skipped when read.
VALID_SAMPLE = (
    "typeof(at) IN ('real', 'integer') AND at BETWEEN 0 AND 253402300799 "  # up to 9999
    "AND typeof(balance) = 'integer' "
    "AND typeof(holds) = 'integer' AND typeof(spent_total) = 'integer' "
    "AND typeof(spend_day) IN ('integer', 'null') AND typeof(spend_week) IN ('integer', 'null') "
    "AND typeof(spend_month) IN ('integer', 'null')"
)
# History thinning: every poll for 48 h, then one per hour, then one per day; gone after 400 d.
KEEP_ALL = timedelta(hours=48)
KEEP_HOURLY = timedelta(days=30)
KEEP_DAILY = timedelta(days=400)


def open_error(path: Path | str, exc: BaseException) -> str:
    """Why the database could not be opened, and what to do about it."""
    text = str(exc) or type(exc).__name__
    hint = ""
    if "readonly" in text or "read-only" in text:
        hint = "; make the file and its directory writable by this user (e.g. chown)"
    elif "disk I/O error" in text:
        # Not corruption: moving the file aside would throw a healthy database away.
        hint = (
            "; the disk failed a read or write, or the -wal or -shm file next to it was "
            "deleted while a bridge ran: check the disk (dmesg) and restart the bridge"
        )
    elif is_locked(exc):
        hint = "; another program holds it (a backup, or sqlite3 open in a terminal?)"
    elif isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        hint = "; move the file aside and the bridge starts with a fresh one"
    return f"cannot open the state database {path}: {text}{hint}"


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: str
    channel: str
    account: str
    notice: Notice
    attempts: int


class StoreError(Exception):
    """The state database could not be read or written; nothing of that call was kept."""


def is_locked(exc: BaseException) -> bool:
    """Another program holds the database (a backup, a VACUUM, an open `sqlite3` shell)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class _Tables:
    """The connection the parts of the store share (Store opens it)."""

    _db: sqlite3.Connection

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Outbox(_Tables):
    """The alert outbox: what each channel owes, in order."""

    def due(self, channel: str, now: datetime, limit: int = 50) -> list[OutboxItem]:
        """What the channel owes, strictly in the order it was written, up to the first item
        still waiting out a backoff: a later notice (a rule's `recovered`) never overtakes an
        earlier one (its `fired`). Permanently failed items are skipped; a row that is not
        the notice we wrote (bit rot, a hand edit) is marked failed here, once, so the
        channel goes on with the next."""
        rows = self._db.execute(
            "SELECT rowid, id, channel, account, payload, attempts, next_attempt FROM outbox "
            "WHERE channel = ? AND delivered IS NULL AND failed IS NULL "
            "ORDER BY rowid LIMIT ?",  # the order written, whatever the wall clock did
            (channel, limit),
        ).fetchall()
        out: list[OutboxItem] = []
        for rowid, i, c, a, p, n, next_attempt in rows:
            if isinstance(next_attempt, int | float) and next_attempt > now.timestamp():
                break
            notice = Notice.from_json(p)
            if not all(isinstance(v, str) for v in (i, c, a)):
                # Updates match on the id: a non-text id would be sent again every round.
                notice = "id, channel or account is not text"
            if isinstance(notice, str) or not isinstance(n, int):
                problem = notice if isinstance(notice, str) else "attempts is not a number"
                try:
                    self._db.execute(  # the date it was given up, whatever cut-off `now` is
                        "UPDATE outbox SET failed = ?, last_error = ? WHERE rowid = ?",
                        (time.time(), f"unreadable: {problem}", rowid),
                    )
                except sqlite3.OperationalError as exc:
                    # Locked or busy: the good notices of this batch still go; the row is
                    # marked on a later round.
                    log.warning(
                        "%s: outbox row %s is unreadable (%s) and could not be marked failed "
                        "yet (%s); skipped",
                        channel,
                        rowid,
                        problem,
                        exc,
                    )
                    continue
                log.error(
                    "%s: outbox row %s (notice %r) is unreadable (%s); marked failed, not sent",
                    channel,
                    rowid,
                    i,
                    problem,
                )
                continue
            out.append(OutboxItem(str(i), str(c), str(a), notice, n))
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


class _History(_Tables):
    """Balance and spend samples (burn rate, runway, `history`)."""

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
        sql = f"SELECT * FROM samples WHERE account = ? AND {VALID_SAMPLE}"  # noqa: S608 (a constant)
        args: tuple[object, ...] = (account,)
        if at_or_before is not None:
            sql += " AND at <= ?"
            args += (at_or_before.timestamp(),)
        row = self._db.execute(sql + " ORDER BY at DESC LIMIT 1", args).fetchone()
        return _sample(row) if row else None

    def spend_total(self, account: str) -> SpendTotal | None:
        """The account's lifetime spend; None before its first full poll. A row that is not as
        we wrote it (a hand edit, bit rot) is dropped with a warning: the total starts again."""
        row = self._db.execute(
            "SELECT total, month_start, month_spend FROM spend_total WHERE account = ?",
            (account,),
        ).fetchone()
        if row is None:
            return None
        total, month_start, month_spend = row
        if (
            isinstance(total, int)
            and isinstance(month_spend, int)
            and isinstance(month_start, int | float)
            and 0 <= month_start <= 253402300799
            and total >= month_spend >= 0
        ):
            return SpendTotal(total, datetime.fromtimestamp(month_start, UTC), month_spend)
        log.warning(
            "%s: the stored lifetime spend is not as the bridge wrote it; it starts again",
            account,
        )
        self._db.execute("DELETE FROM spend_total WHERE account = ?", (account,))
        return None

    def oldest_sample(self, account: str) -> Sample | None:
        sql = f"SELECT * FROM samples WHERE account = ? AND {VALID_SAMPLE}"  # noqa: S608 (a constant)
        row = self._db.execute(sql + " ORDER BY at LIMIT 1", (account,)).fetchone()
        return _sample(row) if row else None

    def anchor(self, account: str, at_or_before: datetime) -> tuple[Sample | None, datetime | None]:
        """The last sample at or before a time, and when the next one was taken (until then
        the answer stays the same)."""
        found = self.latest_sample(account, at_or_before)
        row = self._db.execute(
            f"SELECT MIN(at) FROM samples WHERE account = ? AND at > ? AND {VALID_SAMPLE}",  # noqa: S608
            (account, at_or_before.timestamp()),
        ).fetchone()
        return found, _dt(row[0]) if row else None

    def samples(
        self, account: str | None = None, since: datetime | None = None
    ) -> Iterator[tuple[str, Sample]]:
        sql = f"SELECT * FROM samples WHERE {VALID_SAMPLE}"  # noqa: S608 (a constant)
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

    def unreadable_samples(self) -> int:
        """History rows that are not as we wrote them (skipped wherever history is read)."""
        sql = f"SELECT COUNT(*) FROM samples WHERE NOT ({VALID_SAMPLE})"  # noqa: S608
        try:
            return int(self._db.execute(sql).fetchone()[0])
        except sqlite3.Error as exc:
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


class Store(_Outbox, _History):
    def __init__(self, path: Path, *, busy_ms: int = 1000, prepare: bool = True) -> None:
        """Open the connection; with `prepare` (the default) also set the database up. Without,
        `prepare()` runs later (a database another program holds locked at start)."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Another program may hold a lock (a backup, a VACUUM, an open `sqlite3` shell): wait
        # `busy_ms` at most, so the alert bookkeeping does not stall behind it; a failed call
        # is owed and retried. `open(lock_wait=…)` waits longer, once, at start.
        self._db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        self.ready = False
        self.install_id = ""
        self._files: dict[str, tuple[int, int]] = {}
        if prepare:
            self.prepare()

    def prepare(self, now: datetime | None = None) -> None:
        """WAL, the schema, this install's id; with `now`, also prove it can be written."""
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a process crash (our kill -9 case) and cheap.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "failed" not in columns:  # a database from before permanent failures existed
            self._db.execute("ALTER TABLE outbox ADD COLUMN failed REAL")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rule_state)")}
        if "step" not in columns:  # a database from before budget warning steps
            self._db.execute("ALTER TABLE rule_state ADD COLUMN step INTEGER")
        if now is not None:
            self.check_writable(now)
        # Notice ids carry it: ids from another install, or from this one before a reset,
        # never repeat, so a receiver that drops a repeated id drops only real repeats.
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('install_id', ?)", (secrets.token_hex(5),)
        )
        row = self._db.execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()
        self.install_id = str(row[0])
        self.ready = True
        self._files = self._identity()

    @classmethod
    def open(
        cls, path: Path, now: datetime | None = None, *, lock_wait: float | None = None
    ) -> Store:
        """Open (creating it if needed); with `now`, also prove it can be written. Raises
        StoreError naming the file and what to do. With `lock_wait`, a database another
        program keeps locked for that long is returned unprepared (`ready` False) instead."""
        busy_ms = 1000 if lock_wait is None else int(lock_wait * 1000)
        store: Store | None = None
        try:
            store = cls(path, busy_ms=busy_ms, prepare=False)
            store.verify()
            store.prepare(now)
        except (OSError, sqlite3.Error) as exc:
            if lock_wait is not None and store is not None and is_locked(exc):
                store._db.execute("PRAGMA busy_timeout=1000")
                return store
            if store is not None:
                store.close()
            raise StoreError(open_error(path, exc)) from None
        store._db.execute("PRAGMA busy_timeout=1000")
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

    # ---- the files under the open connection -----------------------------------------------

    def _identity(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for name in (str(self.path), f"{self.path}-wal"):
            try:
                st = os.stat(name)
            except OSError:
                continue
            out[name] = (st.st_dev, st.st_ino)
        return out

    def check_files(self) -> str | None:
        """What happened to the files this connection writes, if anything: deleted or
        replaced while open (a cleanup script, a file moved aside), whatever is saved from
        now on is gone at the next start."""
        now = self._identity()
        for name, ident in self._files.items():
            if name not in now:
                return f"{name} was deleted while the bridge runs"
            if now[name] != ident:
                return f"{name} was replaced while the bridge runs"
        return None

    def close(self) -> None:
        self._db.close()

    # ---- rule state + outbox, atomically ---------------------------------------------------

    def rule_states(self, account: str) -> dict[str, RuleState]:
        rows = self._db.execute(
            "SELECT rule, firing, since, last_notified, window, seq, step FROM rule_state "
            "WHERE account = ?",
            (account,),
        )
        return {
            # A step that is not a whole number (a hand edit) counts as none passed.
            rule: RuleState(
                bool(firing),
                _dt(since),
                _dt(last),
                window,
                seq,
                step=step if isinstance(step, int) else None,
            )
            for rule, firing, since, last, window, seq, step in rows
        }

    def commit(
        self,
        account: str,
        changed: Mapping[str, RuleState],
        notices: Sequence[Notice],
        channels: Sequence[str],
        now: datetime,
        sample: Sample | None = None,
        total: SpendTotal | None = None,
    ) -> None:
        """Rule states, their notices, the poll's history sample and lifetime spend, all or
        nothing: a top-up measured against a sample is never lost because the sample was saved
        without it, and a month-to-date figure is counted in the total exactly once."""
        if not changed and not notices and sample is None and total is None:
            return
        with self._tx():
            if sample is not None:
                self.add_sample(account, sample)
            if total is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO spend_total VALUES (?, ?, ?, ?)",
                    (account, total.total_micro, total.month_start.timestamp(), total.month_micro),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO rule_state "
                "(account, rule, firing, since, last_notified, window, seq, step) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        account,
                        rule,
                        int(s.firing),
                        _ts(s.since),
                        _ts(s.last_notified),
                        s.window,
                        s.seq,
                        s.step,
                    )
                    for rule, s in changed.items()
                ],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (id, channel, account, payload, created, "
                "next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (n.id, ch, account, n.dumps(), now.timestamp(), now.timestamp())
                    for n in notices
                    for ch in channels
                ],
            )

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


def _sample(row: tuple[Any, ...]) -> Sample:
    _acc, at, balance, holds, day, week, month, total = row
    return Sample(datetime.fromtimestamp(at, UTC), balance, holds, day, week, month, total)


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


class _Worker:
    """One daemon thread that runs the store's calls in order. A daemon, unlike an executor's
    thread, so a call stuck on a frozen disk cannot keep the process from exiting."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self.running_since: float | None = None  # time.monotonic() of the call running now
        self._thread = threading.Thread(target=self._run, name="cm-store", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._jobs.put((fut, fn))
        return fut

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up before it started: never run it late
            self.running_since = time.monotonic()
            try:
                result = fn()
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            finally:
                self.running_since = None

    def stop(self, timeout: float) -> bool:
        """Finish what is queued within `timeout` seconds; False if the thread is stuck."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


async def in_thread(fn: Callable[[], T], deadline: float, what: str) -> T:
    """`fn` on a daemon thread of its own, awaited for at most `deadline` seconds: opening a
    database on a hung disk must not hang the start (nor, being a daemon, the exit)."""
    worker = _Worker()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(worker.submit(fn)), deadline)
    except TimeoutError:
        raise StoreError(
            f"{what} did not answer within {deadline:g} s; the disk or network share it is on "
            "may hang"
        ) from None
    finally:
        worker.stop(0)


class AsyncStore:
    """The store for the event loop: every call runs on one dedicated thread, with a deadline.

    A failing call raises StoreError and is remembered in `problem` (for /healthz) until a
    later call succeeds. A call that does not answer within `deadline` seconds (a stalled SD
    card or NFS share) raises StoreError too; while it is still stuck, later calls fail at
    once instead of queueing behind it, so the callers owe their work and retry it later."""

    def __init__(self, store: Store, *, deadline: float = DEFAULTS.store_deadline) -> None:
        self.store = store
        self.deadline = deadline
        self._worker = _Worker()
        self._failure: str | None = None
        self.files_problem: str | None = None

    @property
    def problem(self) -> str | None:
        """What is wrong with the store now, in words, or None."""
        stuck = self._stuck_for()
        if stuck is not None:
            return f"the state database {self.store.path} has not answered for {stuck:.0f} s"
        return self.files_problem or self._failure

    def _stuck_for(self) -> float | None:
        since = self._worker.running_since
        if since is None:
            return None
        running = time.monotonic() - since
        return running if running > self.deadline else None

    async def call(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`await store.call(Store.commit, …)`: the call, on the store's thread."""
        if (stuck := self._stuck_for()) is not None:
            raise StoreError(f"the state database has not answered for {stuck:.0f} s")
        job = functools.partial(self._run, fn, *args, **kwargs)
        try:
            async with asyncio.timeout(self.deadline):
                result = await asyncio.wrap_future(self._worker.submit(job))
        except TimeoutError:
            text = f"the state database did not answer within {self.deadline:g} s"
            self._failed(f"{text} (a stalled disk?)")
            raise StoreError(text) from None
        except (sqlite3.Error, OSError) as exc:
            self._failed(str(exc) or type(exc).__name__)
            raise StoreError(self._failure) from None
        except (TypeError, ValueError, OverflowError) as exc:
            # A row that is not as we wrote it (a hand edit, bit rot): a failing store, not
            # a crash of the task that asked.
            self._failed(f"unreadable data: {type(exc).__name__}: {exc}")
            raise StoreError(self._failure) from None
        if self._failure is not None:
            log.info("alert store works again")
            self._failure = None
        return result

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.store.ready:  # locked by another program at start
            self.store.prepare(datetime.now(UTC))
            log.info("state database %s ready", self.store.path)
        return fn(self.store, *args, **kwargs)

    async def check_files(self) -> None:
        """Notice (log once, and in `problem`) a database deleted or replaced under us."""
        try:
            found = await self.call(Store.check_files)
        except StoreError:
            return  # reported as the store's own problem
        if found != self.files_problem:
            if found is not None:
                log.error(
                    "alert store: %s; what is saved from now on (alert state, thresholds set "
                    "from Home Assistant) is lost at the next start: restart the bridge to "
                    "start a new database",
                    found,
                )
            else:
                log.info("alert store: the database file is back")
            self.files_problem = found

    def _failed(self, problem: str) -> None:
        if self._failure is None:
            log.error("alert store: %s (alerts are kept and retried)", problem)
        self._failure = problem

    def close(self) -> None:
        """Close the database on its thread; give up after the deadline (a frozen disk)."""
        self._worker.submit(self.store.close)
        if not self._worker.stop(self.deadline):
            log.warning("the state database did not close within %g s", self.deadline)
