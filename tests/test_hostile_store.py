"""A corrupt state database (a real one, pages overwritten, header intact) is a clear startup
error for `run` and `history`: exit 2 naming the file and the fix (issue 11, finding 3)."""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cm_mqtt_bridge.cli.main import main
from cm_mqtt_bridge.core.samples import Sample
from cm_mqtt_bridge.store.db import DB_NAME, Store
from tests.conftest import KEY

PAGE = 4096


def corrupted_database(data: Path) -> Path:
    """Write a real database with the Store, then overwrite every other page after the first
    two (the header and the schema survive; tables and indexes do not)."""
    store = Store(data / DB_NAME)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(2000):
        store.add_sample("main", Sample(start + timedelta(minutes=i), 10**7 - i, 0, i, i, i, i))
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    path = data / DB_NAME
    pages = path.stat().st_size // PAGE
    assert pages > 10
    with path.open("r+b") as f:
        for n in range(2, pages, 2):
            f.seek(n * PAGE)
            f.write(bytes([0xA5]) * PAGE)
    return path


@pytest.mark.parametrize("command", [["run"], ["history", "--csv"]])
def test_a_corrupt_database_is_exit_2_naming_the_file_and_the_fix(
    tmp_path: Path, command: list[str]
) -> None:
    data = tmp_path / "data"
    path = corrupted_database(data)
    env = {
        "CROSSMODEL_API_KEY": KEY,
        "CROSSMODEL_API_URL": "http://127.0.0.1:9/v1",
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": "9",
        "HOME": str(tmp_path),
    }
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([*command, "--data-dir", str(data)], env)
    lines = err.getvalue().splitlines()
    assert code == 2, err.getvalue()
    assert len(lines) == 1, lines
    assert str(path) in lines[0]
    assert "malformed" in lines[0]
    assert "move the file aside and the bridge starts with a fresh one" in lines[0]
    assert out.getvalue() == ""
