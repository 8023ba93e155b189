"""A key file other users can read gets one warning naming it and the fix, never the key
(issue 15, item 10), as ssh warns about an unprotected private key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from cm_mqtt_bridge.config import file as file_module
from cm_mqtt_bridge.config.settings import load_config
from tests.conftest import KEY
from tests.helpers import run_main
from tests.standin import CrossModelStandin

WARNING = "is accessible by other users"


@pytest.mark.parametrize("mode", [0o644, 0o666], ids=["0644", "0666"])
async def test_a_key_file_readable_by_others_is_warned_about_once(
    standin: CrossModelStandin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: int,
) -> None:
    key_file = tmp_path / "api_key"
    key_file.write_text(KEY + "\n")
    env = {
        "CROSSMODEL_API_KEY_FILE": str(key_file),
        "CROSSMODEL_API_URL": standin.url,
        "HOME": str(tmp_path),
    }

    async def status() -> str:
        # `status` runs its own event loop; the stand-in keeps serving on this one.
        result = await asyncio.to_thread(
            run_main, capsys, "status", "--json", env=env, secrets=[KEY]
        )
        assert result.code == 0, result.err
        return result.err

    key_file.chmod(0o600)
    assert WARNING not in await status()
    key_file.chmod(mode)
    err = await status()
    warnings = [line for line in err.splitlines() if WARNING in line]
    assert len(warnings) == 1, err
    assert f"CROSSMODEL_API_KEY_FILE: {key_file} {WARNING} (mode {mode:04o})" in warnings[0]
    assert warnings[0].endswith(f"restrict it with: chmod 600 {key_file}")
    assert " WARNING " in warnings[0]


def test_one_warning_for_a_key_file_shared_by_accounts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "shared_key"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    config = tmp_path / "config.yaml"
    accounts = [{"id": f"a{i}", "api_key_file": str(key_file)} for i in range(3)]
    config.write_text(yaml.safe_dump({"accounts": accounts}))
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # loaded twice in one process: still one warning
        load_config(config_path=config, env={}, cli={})
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert warnings == [
        f"accounts[0].api_key_file: {key_file} {WARNING} (mode 0644); "
        f"restrict it with: chmod 600 {key_file}"
    ]
    assert KEY not in caplog.text


def test_a_container_secret_mount_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Docker Swarm and Kubernetes mount secrets 0444 by design: /run/secrets stands in here.
    mounts = tmp_path / "run" / "secrets"
    mounts.mkdir(parents=True)
    monkeypatch.setattr(file_module, "SECRET_MOUNTS", (mounts,))
    key_file = mounts / "crossmodel_api_key"
    key_file.write_text(KEY)
    key_file.chmod(0o444)
    caplog.set_level(logging.WARNING)
    config = load_config(config_path=None, env={"CROSSMODEL_API_KEY_FILE": str(key_file)}, cli={})
    assert config.accounts[0].api_key.get_secret_value() == KEY
    assert WARNING not in caplog.text
    outside = tmp_path / "api_key"
    outside.write_text(KEY)
    outside.chmod(0o444)
    load_config(config_path=None, env={"CROSSMODEL_API_KEY_FILE": str(outside)}, cli={})
    assert f"{outside} {WARNING} (mode 0444)" in caplog.text
