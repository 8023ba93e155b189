"""Helpers shared by the tests: waiting on a condition, and reading the state database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cm_mqtt_bridge.alerts.store import DB_NAME


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Wait until `check()` is truthy and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
    return result


def db_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def outbox(data_dir: Path) -> list[tuple[str, str, int, bool]]:
    """(id, channel, attempts, delivered) of every outbox row."""
    return [
        (i, c, a, d is not None)
        for i, c, a, d in db_rows(
            data_dir, "SELECT id, channel, attempts, delivered FROM outbox ORDER BY id, channel"
        )
    ]
