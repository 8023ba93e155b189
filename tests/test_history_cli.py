"""`cm-mqtt-bridge history --csv` on a prepared data dir, in-process through `cli.main`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cm_mqtt_bridge.core.samples import Sample
from cm_mqtt_bridge.store.db import DB_NAME, Store
from tests.helpers import clean_env, run_main

KEY = "cm-history-0123456789abcdef"
T0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
HEADER = "account,time,balance,holds,available,spend_today,spend_week,spend_month,spent_total"
ROWS = [
    "default,2026-03-01T23:00:00+00:00,8.059489,0.125,7.934489,0.01025,0.67,5.37,0",
    "default,2026-03-02T00:00:00+00:00,8,0.125,7.875,0,0.05,0.05,0.059489",
    "default,2026-03-02T12:30:00+00:00,7.5,0,7.5,0.5,0.55,0.55,0.559489",
    "old,2026-03-01T22:00:00+00:00,1,2,-1,,,,0",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    store = Store(data / DB_NAME)
    try:
        # Out of time order on purpose: the export sorts by account, then time.
        store.add_sample(
            "default",
            Sample(T0 + timedelta(hours=1), 8_000_000, 125_000, 0, 50_000, 50_000, 59_489),
        )
        store.add_sample("default", Sample(T0, 8_059_489, 125_000, 10_250, 670_000, 5_370_000, 0))
        store.add_sample(
            "default",
            Sample(
                T0 + timedelta(hours=13, minutes=30),
                7_500_000,
                0,
                500_000,
                550_000,
                550_000,
                559_489,
            ),
        )
        # An account no longer configured: still exported without --account.
        store.add_sample(
            "old", Sample(T0 - timedelta(hours=1), 1_000_000, 2_000_000, None, None, None, 0)
        )
    finally:
        store.close()
    return data


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return clean_env(home, CROSSMODEL_API_KEY=KEY)


History = Callable[..., tuple[int, str, str]]


@pytest.fixture
def history(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> History:
    def run(*args: str) -> tuple[int, str, str]:
        result = run_main(capsys, "history", *args, env=env, secrets=[KEY])
        return result.code, result.out, result.err

    return run


def test_all_samples_as_csv(history: History, data_dir: Path) -> None:
    code, out, err = history("--csv", "--data-dir", str(data_dir))
    assert code == 0, err
    assert out == "\n".join([HEADER, *ROWS]) + "\n"


def test_one_account_since_a_date(history: History, data_dir: Path) -> None:
    code, out, err = history(
        "--csv", "--account", "default", "--since", "2026-03-02", "--data-dir", str(data_dir)
    )
    assert code == 0, err
    assert out == "\n".join([HEADER, ROWS[1], ROWS[2]]) + "\n"


def test_since_with_a_time_zone(history: History, data_dir: Path) -> None:
    # 13:00 at +01:00 is 12:00 UTC: only the 12:30 sample is at or after it.
    code, out, err = history(
        "--csv", "--since", "2026-03-02T13:00:00+01:00", "--data-dir", str(data_dir)
    )
    assert code == 0, err
    assert out == "\n".join([HEADER, ROWS[2]]) + "\n"


def test_since_the_exact_time_of_a_sample_includes_it(history: History, data_dir: Path) -> None:
    code, out, err = history("--csv", "--since", "2026-03-01T22:00:00", "--data-dir", str(data_dir))
    assert code == 0, err
    assert out == "\n".join([HEADER, *ROWS]) + "\n"
    code, out, err = history("--csv", "--since", "2026-03-01T22:00:01", "--data-dir", str(data_dir))
    assert code == 0, err
    assert out == "\n".join([HEADER, *ROWS[:3]]) + "\n"


def test_an_account_no_longer_configured_cannot_be_asked_for(
    history: History, data_dir: Path
) -> None:
    code, out, err = history("--csv", "--account", "old", "--data-dir", str(data_dir))
    assert (code, out) == (2, "")
    assert "unknown account 'old'" in err


def test_unknown_account_exits_2(history: History, data_dir: Path) -> None:
    code, out, err = history("--csv", "--account", "nope", "--data-dir", str(data_dir))
    assert (code, out) == (2, "")
    assert "unknown account 'nope'" in err


def test_no_database_exits_1(history: History, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    code, out, err = history("--csv", "--data-dir", str(empty))
    assert (code, out) == (1, "")
    assert f"no history yet: {empty / DB_NAME} does not exist" in err
    assert not (empty / DB_NAME).exists()  # looking did not create it


def test_bad_since_is_a_usage_error(history: History, data_dir: Path) -> None:
    code, out, err = history("--csv", "--since", "yesterday", "--data-dir", str(data_dir))
    assert (code, out) == (2, "")
    assert "'yesterday' is not a date like 2026-11-01" in err


def test_history_needs_no_api_key(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Right after the quick start in a new shell: no key in the environment, none stored.
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    result = run_main(capsys, "history", "--data-dir", str(data_dir), env=env)
    assert result.code == 0, result.err
    assert result.out == "\n".join([HEADER, *ROWS]) + "\n"
    one = run_main(capsys, "history", "--account", "default", "--data-dir", str(data_dir), env=env)
    assert (one.code, one.out) == (0, "\n".join([HEADER, *ROWS[:3]]) + "\n")
    # A config whose key file is unreadable (a secret not mounted here) is no obstacle either.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"accounts: [{{id: default, api_key_file: {tmp_path / 'missing'}}}]\ndata_dir: {data_dir}\n"
    )
    from_file = run_main(capsys, "history", "-c", str(config), env=env)
    assert (from_file.code, from_file.err) == (0, "")


def test_unknown_account_message_is_the_same_in_every_command(
    history: History, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = "cm-mqtt-bridge: unknown account 'nope' (configured: default)\n"
    code, _, err = history("--account", "nope", "--data-dir", str(data_dir))
    assert (code, err) == (2, expected)
    env = clean_env(tmp_path, CROSSMODEL_API_KEY=KEY)
    for command in ("dashboard", "test-alert"):
        result = run_main(capsys, command, "--account", "nope", env=env, secrets=[KEY])
        assert (result.code, result.err) == (2, expected), command
