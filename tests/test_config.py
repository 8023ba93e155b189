"""Config layering (CLI > env > file > defaults), validation messages, URL rule, key hygiene."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from cm_mqtt_bridge.config.settings import (
    DEFAULT_API_URL,
    Config,
    ConfigError,
    check_api_url,
    env_layer,
    load_config,
    merge,
    normalize_api_key,
)
from tests.conftest import KEY

KEY2 = "cm-second-account-key-Zq81"
UNKNOWN = "unknown option (check the spelling against config.example.yaml)"

WriteConfig = Callable[[dict[str, Any]], Path]


@pytest.fixture
def base_config() -> dict[str, Any]:
    """A valid file config; tests override parts of it. It sets nothing precedence tests probe."""
    return {
        "accounts": [{"id": "main", "name": "Main", "api_key": KEY}],
        "mqtt": {"username": "bridge", "discovery_prefix": "homeassistant"},
    }


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(data: dict[str, Any]) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return write


def load(
    path: Path | None = None,
    env: dict[str, str] | None = None,
    cli: dict[str, Any] | None = None,
    default_key_file: Path | None = None,
) -> Config:
    return load_config(config_path=path, env=env or {}, cli=cli, default_key_file=default_key_file)


def problems_of(
    path: Path | None = None,
    env: dict[str, str] | None = None,
    cli: dict[str, Any] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env, cli)
    err = info.value
    assert str(err) == "\n".join(err.problems)
    assert KEY not in str(err)
    assert KEY2 not in str(err)
    return err.problems


# ---- precedence ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    file: tuple[tuple[str, ...], Any]  # path in the YAML tree, value
    env: dict[str, str]
    cli: dict[str, Any]
    get: Callable[[Config], Any]
    values: dict[str, Any]  # layer -> the resulting config value


OPTIONS = [
    Option(
        "mqtt.host",
        "localhost",
        (("mqtt", "host"), "file.example"),
        {"MQTT_HOST": "env.example"},
        {"mqtt": {"host": "cli.example"}},
        lambda c: c.mqtt.host,
        {"file": "file.example", "env": "env.example", "cli": "cli.example"},
    ),
    Option(
        "mqtt.port",
        1883,
        (("mqtt", "port"), 1884),
        {"MQTT_PORT": "1885"},
        {"mqtt": {"port": 1886}},
        lambda c: c.mqtt.port,
        {"file": 1884, "env": 1885, "cli": 1886},
    ),
    Option(
        "poll.interval",
        60,
        (("poll", "interval"), 120),
        {"CM_MQTT_BRIDGE__POLL__INTERVAL": "180"},
        {"poll": {"interval": 240}},
        lambda c: c.poll.interval,
        {"file": 120, "env": 180, "cli": 240},
    ),
    Option(
        "data_dir",
        Path("./data"),
        (("data_dir",), "/srv/file"),
        {"CM_MQTT_BRIDGE__DATA_DIR": "/srv/env"},
        {"data_dir": "/srv/cli"},
        lambda c: c.data_dir,
        {"file": Path("/srv/file"), "env": Path("/srv/env"), "cli": Path("/srv/cli")},
    ),
    Option(
        "accounts[0].api_url",
        DEFAULT_API_URL,
        (("accounts", 0, "api_url"), "https://file.example/v1"),  # type: ignore[arg-type]
        {"CROSSMODEL_API_URL": "https://env.example/v1"},
        {"api_url": "https://cli.example/v1/"},
        lambda c: c.accounts[0].api_url,
        {
            "file": "https://file.example/v1",
            "env": "https://env.example/v1",
            "cli": "https://cli.example/v1",
        },
    ),
]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
@pytest.mark.parametrize(
    ("layers", "winner"),
    [
        ((), None),
        (("file",), "file"),
        (("env",), "env"),
        (("cli",), "cli"),
        (("file", "env"), "env"),
        (("file", "cli"), "cli"),
        (("env", "cli"), "cli"),
        (("file", "env", "cli"), "cli"),
    ],
)
def test_precedence_cli_env_file_defaults(
    base_config: dict[str, Any],
    write_config: WriteConfig,
    option: Option,
    layers: tuple[str, ...],
    winner: str | None,
) -> None:
    data = copy.deepcopy(base_config)
    if "file" in layers:
        path, value = option.file
        node: Any = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[path[-1]] = value
    env = option.env if "env" in layers else {}
    cli = option.cli if "cli" in layers else None
    config = load(write_config(data), env, cli)
    expected = option.default if winner is None else option.values[winner]
    assert option.get(config) == expected
    # The file's other values survive a higher layer overriding one option.
    assert config.mqtt.username == "bridge"
    assert config.accounts[0].id == "main"
    assert config.accounts[0].api_key.get_secret_value() == KEY


def test_env_overrides_one_key_and_keeps_the_rest_of_the_file_section(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    base_config["mqtt"].update(host="broker.lan", port=1884, base_topic="cm_file")
    config = load(write_config(base_config), {"MQTT_PORT": "8883"})
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.base_topic) == (
        "broker.lan",
        8883,
        "cm_file",
    )


def test_defaults(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    config = load(write_config(base_config))
    assert config.poll.interval == 60
    assert config.poll.stale_after_s == 180
    assert config.poll.credits_timeout == 15.0
    assert config.poll.usage_timeout == 5.0
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.password is None
    assert config.mqtt.discovery_prefix == "homeassistant"
    assert config.mqtt.base_topic == "cm_mqtt_bridge"
    assert config.data_dir == Path("./data")
    assert config.accounts[0].api_url == DEFAULT_API_URL


def test_config_path_from_env(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    base_config["poll"] = {"interval": 90}
    path = write_config(base_config)
    config = load(None, {"CM_MQTT_BRIDGE_CONFIG": str(path)})
    assert config.poll.interval == 90
    assert config.accounts[0].id == "main"


def test_config_is_frozen_and_hides_the_key(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    config = load(write_config(base_config))
    with pytest.raises(ValidationError):
        config.poll.interval = 30  # type: ignore[misc]
    assert KEY not in repr(config)
    assert KEY not in str(config)
    assert config.secrets() == [KEY]


# ---- environment --------------------------------------------------------------------------


def test_crossmodel_env_alone_defines_account_default() -> None:
    config = load(
        None, {"CROSSMODEL_API_KEY": KEY, "CROSSMODEL_API_URL": "http://127.0.0.1:8080/v1/"}
    )
    assert len(config.accounts) == 1
    acc = config.accounts[0]
    assert (acc.id, acc.name) == ("default", "Default")
    assert acc.api_key.get_secret_value() == KEY
    assert acc.api_url == "http://127.0.0.1:8080/v1"


def test_crossmodel_key_alone_uses_the_default_url() -> None:
    config = load(None, {"CROSSMODEL_API_KEY": f"  '{KEY}'\n"})
    assert config.accounts[0].api_url == DEFAULT_API_URL
    assert config.accounts[0].api_key.get_secret_value() == KEY


def test_crossmodel_key_overrides_the_single_file_account(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    config = load(write_config(base_config), {"CROSSMODEL_API_KEY": KEY2})
    assert [a.id for a in config.accounts] == ["main"]
    assert config.accounts[0].api_key.get_secret_value() == KEY2


def test_crossmodel_env_with_several_file_accounts_is_refused(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    base_config["accounts"].append({"id": "work", "api_key": KEY2})
    problems = problems_of(write_config(base_config), {"CROSSMODEL_API_KEY": KEY})
    assert problems == [
        "CROSSMODEL_API_KEY is set, but the config file lists 2 accounts and it applies to a "
        "single account: unset it and give each account its own api_key_file (and api_url)"
    ]


def test_no_account_at_all() -> None:
    assert problems_of(None, {}) == [
        "accounts: no account configured: set CROSSMODEL_API_KEY or list accounts in the "
        "config file"
    ]


def test_mqtt_env_aliases() -> None:
    env = {
        "CROSSMODEL_API_KEY": KEY,
        "MQTT_HOST": "broker.lan",
        "MQTT_PORT": "8883",
        "MQTT_USERNAME": "ha",
        "MQTT_PASSWORD": "mqtt-pass-77",
    }
    config = load(None, env)
    assert config.mqtt.host == "broker.lan"
    assert config.mqtt.port == 8883
    assert config.mqtt.username == "ha"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "mqtt-pass-77"
    assert "mqtt-pass-77" not in repr(config)
    assert config.secrets() == [KEY, "mqtt-pass-77"]


def test_mqtt_password_without_username_is_refused() -> None:
    problems = problems_of(None, {"CROSSMODEL_API_KEY": KEY, "MQTT_PASSWORD": "pw"})
    assert problems == ["mqtt: password given without username"]


def test_nested_env_options() -> None:
    env = {
        "CROSSMODEL_API_KEY": KEY,
        "CM_MQTT_BRIDGE__POLL__INTERVAL": "300",
        "CM_MQTT_BRIDGE__POLL__USAGE_TIMEOUT": "2.5",
        "CM_MQTT_BRIDGE__MQTT__BASE_TOPIC": "wallet",
        "CM_MQTT_BRIDGE__LOG_LEVEL": "DEBUG",
    }
    config = load(None, env)
    assert config.poll.interval == 300
    assert config.poll.usage_timeout == 2.5
    assert config.mqtt.base_topic == "wallet"
    assert config.log_level == "DEBUG"


def test_env_layer_is_pure_and_skips_accounts_and_empty_values() -> None:
    env = {
        "MQTT_HOST": "h",
        "MQTT_PORT": "",
        "CM_MQTT_BRIDGE__POLL__INTERVAL": "90",
        "CM_MQTT_BRIDGE__MQTT__QOS": "0",
        "CM_MQTT_BRIDGE__ACCOUNTS__0__API_KEY": KEY,
        "CM_MQTT_BRIDGE__DATA_DIR": "",
        "CROSSMODEL_API_KEY": KEY,
        "HOME": "/root",
    }
    before = dict(env)
    assert env_layer(env) == {
        "mqtt": {"host": "h", "qos": "0"},
        "poll": {"interval": "90"},
    }
    assert env == before


def test_merge_is_deep_later_wins_and_does_not_mutate() -> None:
    a = {"mqtt": {"host": "a", "port": 1}, "accounts": [{"id": "x"}], "data_dir": "a"}
    b = {"mqtt": {"host": "b"}, "accounts": [{"id": "y"}]}
    c = {"mqtt": {"port": 3}, "poll": {"interval": 40}}
    snapshot = copy.deepcopy((a, b, c))
    assert merge(a, b, c) == {
        "mqtt": {"host": "b", "port": 3},
        "accounts": [{"id": "y"}],  # lists are replaced whole
        "data_dir": "a",
        "poll": {"interval": 40},
    }
    assert (a, b, c) == snapshot
    assert merge() == {}


# ---- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        KEY,
        f"  {KEY}  ",
        f"{KEY}\n",
        f'"{KEY}"',
        f"'{KEY}'",
        f" ' {KEY} ' \n",
    ],
)
def test_normalize_api_key_trims_whitespace_and_one_pair_of_quotes(raw: str) -> None:
    assert normalize_api_key(raw) == KEY


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "API key is empty"),
        ("  \n", "API key is empty"),
        ('""', "API key is empty"),
        ("sk-live-abcdef", "API key must start with 'cm-' (CrossModel keys do)"),
        ("CM-abcdef", "API key must start with 'cm-' (CrossModel keys do)"),
        (f"\"'{KEY}'\"", "API key must start with 'cm-' (CrossModel keys do)"),  # one pair only
        (f"\"{KEY}'", "API key must start with 'cm-' (CrossModel keys do)"),  # not matching
        ("cm-abc def", "API key contains whitespace or control characters"),
        ("cm-abc\x00def", "API key contains whitespace or control characters"),
    ],
)
def test_normalize_api_key_refuses(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        normalize_api_key(raw)


def test_key_without_cm_prefix_is_refused_naming_the_rule(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    wrong = "sk-proj-WRONGKEY-123456"
    base_config["accounts"][0]["api_key"] = wrong
    problems = problems_of(write_config(base_config))
    assert problems == ["accounts[0].api_key: API key must start with 'cm-' (CrossModel keys do)"]
    assert wrong not in "\n".join(problems)


def test_key_env_without_cm_prefix_is_refused() -> None:
    problems = problems_of(None, {"CROSSMODEL_API_KEY": "sk-WRONG-987"})
    assert problems == [
        "CROSSMODEL_API_KEY (accounts[0].api_key): API key must start with 'cm-' (CrossModel "
        "keys do)"
    ]


@pytest.mark.parametrize(
    "content", [f"{KEY}\n", f"  {KEY}  \n\n", f'"{KEY}"\n', f"'{KEY}'", f"\n\t{KEY}\r\n"]
)
def test_api_key_file_is_read_trimmed_and_unquoted(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path, content: str
) -> None:
    secret = tmp_path / "crossmodel_key"
    secret.write_text(content, encoding="utf-8")
    base_config["accounts"][0] = {"id": "main", "api_key_file": str(secret)}
    config = load(write_config(base_config))
    assert config.accounts[0].api_key.get_secret_value() == KEY
    assert config.accounts[0].name == "main"  # name defaults to the id


def test_api_key_file_missing(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    base_config["accounts"][0] = {"id": "main", "api_key_file": str(missing)}
    problems = problems_of(write_config(base_config))
    assert (
        problems[0]
        == f"accounts[0].api_key_file: cannot read {missing} (No such file or directory)"
    )


def test_api_key_file_with_a_bad_key(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path
) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-WRONG-1\n")
    base_config["accounts"][0] = {"id": "main", "api_key_file": str(secret)}
    problems = problems_of(write_config(base_config))
    assert problems == ["accounts[0].api_key: API key must start with 'cm-' (CrossModel keys do)"]


def test_api_key_and_api_key_file_together_are_refused(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path
) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY2)
    base_config["accounts"][0]["api_key_file"] = str(secret)
    problems = problems_of(write_config(base_config))
    assert "accounts[0]: give api_key or api_key_file, not both" in problems


def test_env_key_replaces_the_file_accounts_key_file(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path
) -> None:
    base_config["accounts"][0] = {"id": "main", "api_key_file": str(tmp_path / "absent")}
    config = load(write_config(base_config), {"CROSSMODEL_API_KEY": KEY2})
    assert config.accounts[0].api_key.get_secret_value() == KEY2


def test_default_key_file_is_used_only_without_other_accounts(
    base_config: dict[str, Any], write_config: WriteConfig, tmp_path: Path
) -> None:
    stored = tmp_path / "api_key"
    stored.write_text(f"{KEY2}\n")
    config = load(None, {}, default_key_file=stored)
    assert config.accounts[0].id == "default"
    assert config.accounts[0].api_key.get_secret_value() == KEY2
    config = load(write_config(base_config), {}, default_key_file=stored)
    assert config.accounts[0].api_key.get_secret_value() == KEY
    config = load(None, {"CROSSMODEL_API_KEY": KEY}, default_key_file=stored)
    assert config.accounts[0].api_key.get_secret_value() == KEY


# ---- API URL rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "result"),
    [
        ("https://api.crossmodel.ai/v1", "https://api.crossmodel.ai/v1"),
        ("https://api.crossmodel.ai/v1/", "https://api.crossmodel.ai/v1"),
        ("https://api.crossmodel.ai:8443/v1", "https://api.crossmodel.ai:8443/v1"),
        ("https://10.0.0.5/v1", "https://10.0.0.5/v1"),
        ("http://localhost:8080/v1", "http://localhost:8080/v1"),
        ("http://LOCALHOST/v1", "http://LOCALHOST/v1"),
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        ("http://127.45.6.7/v1", "http://127.45.6.7/v1"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("https://[2001:db8::1]/v1", "https://[2001:db8::1]/v1"),
    ],
)
def test_api_url_accepted(url: str, result: str) -> None:
    assert check_api_url(url) == result


HTTP_RULE = "http is only allowed for loopback hosts; use https"
SCHEME_RULE = "must be an absolute URL starting with https://"
CRED_RULE = "must not contain credentials (user:password@)"
PCT_RULE = "must not contain '%' (percent-encoded characters are refused)"
WS_RULE = "must not contain whitespace or control characters"
HOST_RULE = "must have a plain host name"

BAD_URLS = [
    ("http://api.crossmodel.ai/v1", HTTP_RULE),
    ("http://10.0.0.5/v1", HTTP_RULE),
    ("http://localhost.evil.example/v1", HTTP_RULE),
    ("http://127.0.0.1.nip.io/v1", HTTP_RULE),
    ("http://0x7f.1/v1", HTTP_RULE),
    ("http://[2001:db8::1]/v1", HTTP_RULE),
    ("https://user:pw@api.crossmodel.ai/v1", CRED_RULE),
    ("https://user@api.crossmodel.ai/v1", CRED_RULE),
    ("http://user:pw@127.0.0.1/v1", CRED_RULE),
    ("https://api.crossmodel.ai%2eevil.example/v1", PCT_RULE),
    ("https://api.crossmodel.ai/v1%2f..", PCT_RULE),
    ("https://api.crossmodel.ai/v1 ", WS_RULE),
    ("https://api. crossmodel.ai/v1", WS_RULE),
    ("https://api.crossmodel.ai\t/v1", WS_RULE),
    ("https://api.crossmodel.ai/v1\n", WS_RULE),
    ("https://api.crossmodel.ai/\x7fv1", WS_RULE),
    ("ftp://api.crossmodel.ai/v1", SCHEME_RULE),
    ("file:///etc/passwd", SCHEME_RULE),
    ("javascript:alert(1)", SCHEME_RULE),
    ("api.crossmodel.ai/v1", SCHEME_RULE),
    ("//api.crossmodel.ai/v1", SCHEME_RULE),
    ("", SCHEME_RULE),
    ("https:///v1", HOST_RULE),
    ("https://api_crossmodel.ai/v1", HOST_RULE),
    ("https://api.crossmodel.ai:99999/v1", "has an invalid port"),
    ("https://api.crossmodel.ai:http/v1", "has an invalid port"),
    ("https://api.crossmodel.ai/v1?key=1", "must not have a query or fragment"),
    ("https://api.crossmodel.ai/v1#x", "must not have a query or fragment"),
]


@pytest.mark.parametrize(("url", "rule"), BAD_URLS)
def test_api_url_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(ValueError, match=r"^") as info:
        check_api_url(url)
    assert str(info.value) == rule


@pytest.mark.parametrize(("url", "rule"), BAD_URLS[::3])
def test_api_url_refused_at_load_naming_the_field(
    base_config: dict[str, Any], write_config: WriteConfig, url: str, rule: str
) -> None:
    base_config["accounts"][0]["api_url"] = url
    assert problems_of(write_config(base_config)) == [f"accounts[0].api_url: {rule}"]


def test_api_url_from_env_names_the_field() -> None:
    problems = problems_of(
        None, {"CROSSMODEL_API_KEY": KEY, "CROSSMODEL_API_URL": "http://api.crossmodel.ai/v1"}
    )
    assert problems == [
        "CROSSMODEL_API_URL (accounts[0].api_url): http is only allowed for loopback hosts; "
        "use https"
    ]


def test_api_url_field_names_the_right_account(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    base_config["accounts"].append(
        {"id": "work", "api_key": KEY2, "api_url": "http://work.example/v1"}
    )
    problems = problems_of(write_config(base_config))
    assert problems == ["accounts[1].api_url: http is only allowed for loopback hosts; use https"]


# ---- validation problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"poll": {"interval": 29}}, "poll.interval: Input should be greater than or equal to 30"),
        ({"poll": {"interval": 0}}, "poll.interval: Input should be greater than or equal to 30"),
        ({"poll": {"interval": "soon"}}, "poll.interval: Input should be a valid number, "
         "unable to parse string as a number"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than or equal to 65535"),
        ({"mqtt": {"base_topic": "a/+/b"}},
         "mqtt.base_topic: use letters, digits, '_', '-' and '/' separators (no + or #)"),
        ({"bogus": 1}, f"bogus: {UNKNOWN}"),
        ({"poll": {"intervall": 60}}, "poll.intervall: unknown option; did you mean interval?"),
        ({"mqtt": {"hots": "x"}}, "mqtt.hots: unknown option; did you mean host?"),
        ({"log_level": "LOUD"},
         "log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)  # fmt: skip
def test_one_readable_problem_naming_the_field(
    base_config: dict[str, Any],
    write_config: WriteConfig,
    override: dict[str, Any],
    problem: str,
) -> None:
    assert problems_of(write_config(merge(base_config, override))) == [problem]


def test_interval_below_30_from_cli_and_env() -> None:
    env = {"CROSSMODEL_API_KEY": KEY, "CM_MQTT_BRIDGE__POLL__INTERVAL": "10"}
    expected = ["poll.interval: Input should be greater than or equal to 30"]
    assert problems_of(None, env) == [
        "CM_MQTT_BRIDGE__POLL__INTERVAL (poll.interval): Input should be greater than or "
        "equal to 30"
    ]
    assert problems_of(None, {"CROSSMODEL_API_KEY": KEY}, {"poll": {"interval": 5}}) == expected


def test_unknown_env_option_is_refused() -> None:
    env = {"CROSSMODEL_API_KEY": KEY, "CM_MQTT_BRIDGE__POLL__INTERVL": "60"}
    assert problems_of(None, env) == [
        "CM_MQTT_BRIDGE__POLL__INTERVL (poll.intervl): unknown option; did you mean interval?"
    ]


def test_unknown_account_option(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    base_config["accounts"][0]["apikey"] = KEY2
    assert problems_of(write_config(base_config)) == [
        "accounts[0].apikey: unknown option; did you mean api_key?"
    ]


def test_every_problem_is_listed_once(
    base_config: dict[str, Any], write_config: WriteConfig
) -> None:
    base_config.update(poll={"interval": 10}, colour="red")
    base_config["mqtt"]["port"] = 0
    base_config["accounts"][0]["api_url"] = "http://example.com/v1"
    assert sorted(problems_of(write_config(base_config))) == sorted(
        [
            "accounts[0].api_url: http is only allowed for loopback hosts; use https",
            "poll.interval: Input should be greater than or equal to 30",
            "mqtt.port: Input should be greater than or equal to 1",
            f"colour: {UNKNOWN}",
        ]
    )


def test_duplicate_account_ids(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    base_config["accounts"].append({"id": "main", "name": "Again", "api_key": KEY2})
    assert problems_of(write_config(base_config)) == ["accounts: duplicate account id 'main'"]


@pytest.mark.parametrize("bad_id", ["Main", "main account", "a/b", "x" * 41, ""])
def test_account_id_rule(
    base_config: dict[str, Any], write_config: WriteConfig, bad_id: str
) -> None:
    base_config["accounts"][0]["id"] = bad_id
    assert problems_of(write_config(base_config)) == [
        "accounts[0].id: use 1-40 characters from a-z, 0-9, '_' and '-' (it goes into topics)"
    ]


def test_account_without_key(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    del base_config["accounts"][0]["api_key"]
    assert problems_of(write_config(base_config)) == [
        "accounts[0].api_key: required option is missing"
    ]


def test_accounts_not_a_list(base_config: dict[str, Any], write_config: WriteConfig) -> None:
    base_config["accounts"] = {"id": "main"}
    assert problems_of(write_config(base_config))[0] == (
        "accounts: must be a list of mappings (id, name, api_key_file, api_url)"
    )


# ---- the file itself ----------------------------------------------------------------------


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("poll:\n  interval: 60\n mqtt: [\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"config file {path}: invalid YAML at line 3, column ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert problems_of(path) == [f"config file {path}: not found"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert problems_of(path) == [f"config file {path}: the top level must be a mapping of options"]


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n")
    config = load(path, {"CROSSMODEL_API_KEY": KEY})
    assert config.poll.interval == 60
    assert config.accounts[0].id == "default"


# ---- the key never appears in a ConfigError ----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # invalid YAML lines that contain the key
        f"accounts:\n  - id: main\n    api_key: {KEY}: oops\n",
        f"accounts:\n  - id: main\n    api_key: *{KEY}\n",
        f"accounts:\n  - id: main\n    api_key: !{KEY} x\n",
        f'accounts:\n  - id: main\n    api_key: "{KEY}\n',
        f"accounts:\n  - id: main\n  api_key: {KEY}\n",
        f"{KEY}: [\n",
        f"accounts:\n\t- api_key: {KEY}\n",
        # valid YAML, key in a wrong place
        f"accounts:\n  - id: main\n    api_kye: {KEY}\n",
        f"accounts:\n  - id: main\n    api_key_file: {KEY}\n",
        f"accounts:\n  - id: main\n    api_key: {KEY}\n    api_url: {KEY}\n",
        f"accounts:\n  - id: main\n    api_key: {KEY}\n    api_url: https://{KEY}@x.example\n",
        f"accounts:\n  - id: main\n    api_key: {KEY}\n    api_url: https://[{KEY}]/v1\n",
        f"accounts:\n  - id: main\n    api_key: {KEY}\n    name: [{KEY}]\n",
        f"accounts:\n  - id: {KEY}\n    api_key: {KEY}\n",
        f"accounts:\n  - id: main\n    api_key: {KEY}\n  - id: main\n    api_key: {KEY}\n",
        f"accounts:\n  - id: main\n    api_key: x{KEY}\n",
        f"accounts:\n  - id: main\n    api_key: [{KEY}]\n",
        f"accounts: {KEY}\n",
        f"poll: {KEY}\n",
        f"poll:\n  interval: {KEY}\n",
        f"log_level: {KEY}\n",
        f"mqtt:\n  port: {KEY}\n",
        f"{KEY}: 1\n",
    ],
)
def test_key_never_in_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    problems = problems_of(path)  # asserts KEY is not in the text
    assert problems
    assert all("Traceback" not in p for p in problems)
    assert all("cm-test" not in p for p in problems)


@pytest.mark.parametrize(
    "env",
    [
        {"CROSSMODEL_API_KEY": KEY, "CROSSMODEL_API_URL": KEY},
        {"CROSSMODEL_API_KEY": "https://api.crossmodel.ai/v1", "CROSSMODEL_API_URL": KEY},
        {"CROSSMODEL_API_KEY": KEY, "MQTT_PORT": KEY},
        {"CROSSMODEL_API_KEY": KEY, "CM_MQTT_BRIDGE__POLL__INTERVAL": KEY},
        {"CROSSMODEL_API_KEY": KEY, f"CM_MQTT_BRIDGE__{KEY}": "1"},
        {"CM_MQTT_BRIDGE_CONFIG": KEY},
    ],
)
def test_key_in_a_wrong_env_variable_is_not_echoed(env: dict[str, str]) -> None:
    problems = problems_of(None, env)
    assert problems
    assert all("cm-test" not in p for p in problems)
