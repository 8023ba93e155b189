"""The one frozen, validated configuration, built once from CLI > env > YAML file > defaults.

Layering is done on plain dicts by pure functions (`file_layer`, `env_layer`, `merge`), then
validated once by pydantic. Every validation problem becomes one readable line naming the field;
no pydantic traceback and no secret ever reaches the user.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..core.configbase import StrictModel
from ..core.redact import redact
from ..core.rules import AlertsConfig
from ..notify.channels import NotifyConfig
from .file import FileProblem, parse_yaml, read_secret

DEFAULT_API_URL = "https://api.crossmodel.ai/v1"
ENV_PREFIX = "CM_MQTT_BRIDGE__"
CONFIG_ENV = "CM_MQTT_BRIDGE_CONFIG"
# Plain env names users know from other bridges, mapped onto the config tree.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "MQTT_HOST": ("mqtt", "host"),
    "MQTT_PORT": ("mqtt", "port"),
    "MQTT_USERNAME": ("mqtt", "username"),
    "MQTT_PASSWORD": ("mqtt", "password"),
}

_ACCOUNT_ID_RE = re.compile(r"[a-z0-9_-]{1,40}")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]+")
# Printable ASCII without space and MQTT wildcards: a control character makes the broker drop
# the connection (a reconnect loop), a wildcard is refused in a client id by some brokers.
_CLIENT_ID_RE = re.compile(r"[!-~]{1,128}")
# A CrossModel key pasted into the wrong field: refused, and never echoed back.
_KEY_SHAPED_RE = re.compile(r"(?i)(?<![a-z0-9])cm-[A-Za-z0-9._~+/=-]{12,}")
KEY_SHAPED = "looks like an API key; put the key in api_key_file, not here"


@functools.cache  # one short string per account; a resent discovery payload asks ~50 times
def entity_slug(account_id: str) -> str:
    """The account id as topics and HA entity ids allow it: [a-z0-9_], no '__', no '_' at ends."""
    return re.sub("_+", "_", account_id.replace("-", "_")).strip("_") or "account"


def refuse_control_characters(v: str) -> str:
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in v):
        raise ValueError("must not contain control characters or line breaks")
    return v


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        # A key typed into the wrong place (api_key_file, a path) must not be echoed back.
        problems = [redact(p) for p in problems]
        super().__init__("\n".join(problems))
        self.problems = problems


def normalize_api_key(raw: str) -> str:
    """Trim whitespace and one pair of matching quotes; keys must start with `cm-`."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        key = key[1:-1].strip()
    if not key:
        raise ValueError("API key is empty")
    if not key.startswith("cm-"):
        raise ValueError("API key must start with 'cm-' (CrossModel keys do)")
    if any(c.isspace() or ord(c) < 32 for c in key):
        raise ValueError("API key contains whitespace or control characters")
    return key


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_url(url: str) -> str:
    """Apply the API URL rule before any request can carry the key; return it without '/'."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("must not contain whitespace or control characters")
    if "%" in url:
        raise ValueError("must not contain '%' (percent-encoded characters are refused)")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bracketed host that is not an IPv6 address
        raise ValueError("must have a plain host name") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError("must be an absolute URL starting with https://")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials (user:password@)")
    try:
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("has an invalid port") from None
    bracketed = parts.netloc.startswith("[")
    if not host or (not bracketed and not _HOST_RE.fullmatch(host)):
        raise ValueError("must have a plain host name")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("must have a plain host name") from None
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError("http is only allowed for loopback hosts; use https")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return url.rstrip("/")


class AccountConfig(StrictModel):
    id: str
    name: str = ""
    api_key: SecretStr
    api_url: str = DEFAULT_API_URL
    # The top-level `alerts` merged with the account's own (see Config._account_alerts).
    alerts: AlertsConfig = AlertsConfig()

    @field_validator("id", "name")
    @classmethod
    def _not_a_key(cls, v: str) -> str:
        if _KEY_SHAPED_RE.search(v):
            raise ValueError(KEY_SHAPED)
        return refuse_control_characters(v)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ACCOUNT_ID_RE.fullmatch(v):
            raise ValueError("use 1-40 characters from a-z, 0-9, '_' and '-' (it goes into topics)")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if not isinstance(raw, str):
            raise ValueError("API key must be a string")
        return SecretStr(normalize_api_key(raw))

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_api_url(v)

    @model_validator(mode="after")
    def _default_name(self) -> Self:
        if not self.name.strip():
            object.__setattr__(self, "name", self.id)
        return self


class PollConfig(StrictModel):
    interval: Annotated[float, Field(ge=30, le=86400)] = 60
    # Default 3 x interval: a single missed poll is not "stale".
    stale_after: Annotated[float, Field(ge=30)] | None = None
    credits_timeout: Annotated[float, Field(gt=0, le=120)] = 15.0
    usage_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    jitter: Annotated[float, Field(ge=0, le=60)] = 5.0
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] = 10
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    min_refresh_interval: Annotated[float, Field(ge=0, le=3600)] = 10.0

    @property
    def stale_after_s(self) -> float:
        return self.stale_after if self.stale_after is not None else 3 * self.interval


def _protocol(value: Any) -> Any:
    # YAML reads `protocol: 5` as a number.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class MqttConfig(StrictModel):
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default_factory=lambda: f"cm-mqtt-bridge-{socket.gethostname()}"[:64])
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 60
    tls: bool = False
    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    tls_insecure: bool = False
    discovery_prefix: str = "homeassistant"
    base_topic: str = "cm_mqtt_bridge"
    qos: Literal[0, 1, 2] = 1
    # MQTT 5 lets the bridge cap the size of what the broker sends it; 3.1.1 for old brokers.
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol)] = "5"

    @field_validator("ca_file", "certfile", "keyfile")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        # Checked now: a missing file would otherwise be an endless reconnect loop.
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v.expanduser() if v is not None else None

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not _CLIENT_ID_RE.fullmatch(v) or "+" in v or "#" in v:
            raise ValueError(
                "use 1-128 printable ASCII characters without spaces, '+' or '#' "
                "(no control characters)"
            )
        return v

    @field_validator("discovery_prefix", "base_topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not _TOPIC_RE.fullmatch(v):
            raise ValueError("use letters, digits, '_', '-' and '/' separators (no + or #)")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if self.password is not None and not self.username:
            raise ValueError("password given without username")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        uses_tls_files = self.ca_file or self.certfile or self.tls_insecure
        if uses_tls_files and not self.tls:
            raise ValueError("ca_file/certfile/tls_insecure need tls: true")
        return self


class HealthConfig(StrictModel):
    """The optional /healthz + /metrics endpoint (on in the Docker image)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8099


# The sections that may be written empty (`notify:` with every option commented out).
OPTIONAL_SECTIONS = frozenset({"poll", "mqtt", "alerts", "notify", "health"})


def merge_alerts(defaults: dict[str, Any] | None, own: dict[str, Any] | None) -> dict[str, Any]:
    """Per-account `alerts` over the top-level defaults, rule by rule (a rule set to false or
    null in the account switches the default off)."""
    out = dict(defaults or {})
    for rule, value in (own or {}).items():
        if isinstance(value, dict) and isinstance(out.get(rule), dict):
            out[rule] = {**out[rule], **value}
        else:
            out[rule] = value
    return out


class Config(StrictModel):
    accounts: tuple[AccountConfig, ...]
    poll: PollConfig = PollConfig()
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    data_dir: Path = Path("./data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    alerts: AlertsConfig = AlertsConfig()
    notify: NotifyConfig = NotifyConfig()
    health: HealthConfig = HealthConfig()

    @model_validator(mode="before")
    @classmethod
    def _account_alerts(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # A section whose options are all commented out (`notify:` alone) is empty.
            data = {k: v for k, v in data.items() if not (v is None and k in OPTIONAL_SECTIONS)}
        # Top-level `alerts` are defaults; an account's own `alerts` override them rule by rule.
        if not isinstance(data, dict) or not isinstance(data.get("accounts"), list | tuple):
            return data
        defaults = data.get("alerts")
        if defaults is not None and not isinstance(defaults, dict):
            return data  # let field validation report it
        accounts = []
        for acc in data["accounts"]:
            if isinstance(acc, dict) and (defaults or acc.get("alerts")):
                own = acc.get("alerts")
                if own is None or isinstance(own, dict):
                    acc = {**acc, "alerts": merge_alerts(defaults, own)}
            accounts.append(acc)
        return {**data, "accounts": accounts}

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, v: tuple[AccountConfig, ...]) -> tuple[AccountConfig, ...]:
        if not v:
            raise ValueError(
                "no account configured: set CROSSMODEL_API_KEY or list accounts in the config file"
            )
        seen: dict[str, str] = {}
        for acc in v:
            if acc.id in seen.values():
                raise ValueError(f"duplicate account id {acc.id!r}")
            slug = entity_slug(acc.id)
            if slug in seen:
                raise ValueError(
                    f"account ids {seen[slug]!r} and {acc.id!r} give the same Home Assistant "
                    "entity ids; rename one"
                )
            seen[slug] = acc.id
        return v

    def summary(self) -> str:
        """What the service runs with, in one line for the start-up log (no secret)."""
        m = self.mqtt
        rules = {a.id: ", ".join(a.alerts.rule_names()) or "none" for a in self.accounts}
        if len(set(rules.values())) == 1:
            rule_text = next(iter(rules.values()))
        else:
            rule_text = "; ".join(f"{acc}: {names}" for acc, names in rules.items())
        return (
            f"accounts {', '.join(a.id for a in self.accounts)}; "
            f"interval {self.poll.interval:g} s; "
            f"broker {m.host}:{m.port}{' (TLS)' if m.tls else ''}; "
            f"base topic {m.base_topic}; discovery prefix {m.discovery_prefix}; "
            f"rules {rule_text}; channels {', '.join(self.notify.channel_names())}"
        )

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction."""
        out = [a.api_key.get_secret_value() for a in self.accounts]
        if self.mqtt.password is not None:
            out.append(self.mqtt.password.get_secret_value())
        return out + self.notify.secrets()


# ---- layers -------------------------------------------------------------------------------


def file_layer(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = parse_yaml(path)
    except FileProblem as exc:
        raise ConfigError([str(exc)]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file {path}: the top level must be a mapping of options"])
    return data


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# Where a value came from, by its config path ("*" for any account index): a flag or an
# environment variable. A mistake is reported there, not only at the config path: a Docker user
# looks for MQTT_PORT in .env, not in config.yaml.
Sources = dict[tuple[str, ...], str]


def env_layer(env: Mapping[str, str], sources: Sources | None = None) -> dict[str, Any]:
    """Everything the environment sets, except the CROSSMODEL_* account variables; `sources`
    gets the variable behind each value."""
    out: dict[str, Any] = {}
    sources = {} if sources is None else sources
    for name, path in ENV_ALIASES.items():
        if env.get(name, "") != "":
            _set_path(out, path, env[name])
            sources[path] = name
    for name, value in env.items():
        if name.upper().startswith(ENV_PREFIX) and value != "":
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p)
            if path and path[0] != "accounts":
                _set_path(out, path, value)
                sources[path] = name
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge dicts, later layers winning; lists and scalars are replaced whole."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            elif isinstance(value, Mapping):
                out[key] = merge(value)
            else:
                out[key] = value
    return out


def _read_key_file(path_value: Any, where: str, problems: list[str]) -> str | None:
    try:
        return read_secret(Path(str(path_value)), where)
    except FileProblem as exc:
        problems.append(str(exc))
        return None


ACCOUNT_ENV = ("CROSSMODEL_API_KEY", "CROSSMODEL_API_KEY_FILE", "CROSSMODEL_API_URL")


def _single_account_settings(env: Mapping[str, str], cli_url: str | None) -> list[str]:
    """The variables (and flag) that define the one account, as the user set them."""
    names = [name for name in ACCOUNT_ENV if env.get(name)]
    return names + (["--api-url"] if cli_url else [])


def _ambiguous(names: list[str], count: int) -> str:
    them = names[0] if len(names) == 1 else " and ".join((", ".join(names[:-1]), names[-1]))
    verb = "is" if len(names) == 1 else "are"
    return (
        f"{them} {verb} set, but the config file lists {count} accounts and "
        f"{'it applies' if len(names) == 1 else 'they apply'} to a single account: unset "
        f"{'it' if len(names) == 1 else 'them'} and give each account its own api_key_file "
        "(and api_url)"
        + (
            " (with Docker Compose: leave CROSSMODEL_API_KEY in .env and the file "
            "secrets/crossmodel_api_key empty)"
            if "CROSSMODEL_API_KEY_FILE" in names
            else ""
        )
    )


def _resolve_accounts(
    merged: dict[str, Any],
    env: Mapping[str, str],
    cli_url: str | None,
    key_file: Path | None,
    problems: list[str],
    sources: Sources,
) -> set[int]:
    """Apply CROSSMODEL_API_KEY/URL and read api_key_file; mutates `merged`. Returns the
    indexes of the accounts whose key could not be read (their "key missing" is no news)."""
    failed: set[int] = set()
    accounts = merged.get("accounts")
    file_problems: list[str] = []
    env, file_key = _env_key_file(env, file_problems)
    settings = _single_account_settings(env, cli_url)
    if isinstance(accounts, list) and len(accounts) > 1 and settings:
        # One mistake, one message: the accounts' own key files are still read below.
        problems.append(_ambiguous(settings, len(accounts)))
        env, cli_url = {}, None
    else:
        problems.extend(file_problems)
    env_key = env.get("CROSSMODEL_API_KEY") or None
    if env_key is None and env.get("CROSSMODEL_API_KEY_FILE"):
        env_key = file_key
        if env_key is None:
            failed.add(0)
        sources["accounts", "*", "api_key"] = "the key in CROSSMODEL_API_KEY_FILE"
    elif env_key is not None:
        sources["accounts", "*", "api_key"] = "CROSSMODEL_API_KEY"
    env_url = _env_url(env, cli_url, sources)
    if accounts is None or accounts == []:
        acc: dict[str, Any] = {"id": "default", "name": "Default"}
        if env_key is not None:
            acc["api_key"] = env_key
        elif key_file is not None and key_file.is_file():
            acc["api_key_file"] = str(key_file)
        elif failed:
            acc["api_key"] = None  # reported above; keeps "no account configured" away
        else:
            return failed
        if env_url:
            acc["api_url"] = env_url
        accounts = merged["accounts"] = [acc]
    if not isinstance(accounts, list) or not all(isinstance(a, dict) for a in accounts):
        problems.append("accounts: must be a list of mappings (id, name, api_key_file, api_url)")
        merged.pop("accounts")
        return failed
    for i, acc in enumerate(accounts):
        if not _account_key(acc, f"accounts[{i}]", env_key, env_url, problems):
            failed.add(i)
    return failed


def _env_url(env: Mapping[str, str], cli_url: str | None, sources: Sources) -> str | None:
    """The API URL every account gets from --api-url or CROSSMODEL_API_URL, if any."""
    env_url = cli_url or env.get("CROSSMODEL_API_URL") or None
    if env_url:
        sources["accounts", "*", "api_url"] = "--api-url" if cli_url else "CROSSMODEL_API_URL"
    return env_url


def _env_key_file(
    env: Mapping[str, str], problems: list[str]
) -> tuple[Mapping[str, str], str | None]:
    """The key in the file CROSSMODEL_API_KEY_FILE names (the Docker-secrets convention),
    unless CROSSMODEL_API_KEY is set; an empty file counts as not given."""
    if env.get("CROSSMODEL_API_KEY") or not env.get("CROSSMODEL_API_KEY_FILE"):
        return env, None
    file_key = _read_key_file(env["CROSSMODEL_API_KEY_FILE"], "CROSSMODEL_API_KEY_FILE", problems)
    if file_key is not None and not file_key.strip():
        # Compose needs the secret file to exist even when the keys are elsewhere (in
        # config.yaml, or one file per account): an empty one means "not given".
        return {k: v for k, v in env.items() if k != "CROSSMODEL_API_KEY_FILE"}, None
    return env, file_key


def _account_key(
    acc: dict[str, Any],
    where: str,
    env_key: str | None,
    env_url: str | None,
    problems: list[str],
) -> bool:
    """One account's key and URL from the environment or its api_key_file; False when its
    key could not be read (the problem is in `problems`)."""
    if env_key is not None:
        acc.pop("api_key_file", None)
        acc["api_key"] = env_key
    if env_url:
        acc["api_url"] = env_url
    key_path = acc.pop("api_key_file", None)
    if key_path is None:
        return True
    if "api_key" in acc:
        problems.append(f"{where}: give api_key or api_key_file, not both")
        return False
    content = _read_key_file(key_path, f"{where}.api_key_file", problems)
    if content is None:
        return False
    acc["api_key"] = content
    return True


# Stands in for every account's key where no key is needed (`history`, `dashboard`); it is
# never sent anywhere.
UNUSED_KEY = "cm-unused-by-this-command"


def _without_keys(merged: dict[str, Any]) -> set[int]:
    """For commands that only read local data: the accounts of the file (or the one
    "default" account the key variables would define), each with a placeholder key, so a
    missing, unreadable or mistyped key is no reason to refuse. Mutates `merged`."""
    accounts = merged.get("accounts")
    if accounts is None or accounts == []:
        merged["accounts"] = [{"id": "default", "name": "Default", "api_key": UNUSED_KEY}]
    elif isinstance(accounts, list):
        for acc in accounts:
            if isinstance(acc, dict):
                acc.pop("api_key_file", None)
                acc["api_key"] = UNUSED_KEY
    return set()


def unknown_account(account_id: str, known: Sequence[str]) -> str:
    """The one message every command gives for an --account that is not configured."""
    return f"unknown account {account_id!r} (configured: {', '.join(known)})"


def _loc(parts: tuple[int | str, ...]) -> str:
    loc = ""
    for part in parts:
        if isinstance(part, int):
            loc += f"[{part}]"
        else:
            loc += ("." if loc else "") + str(part)
    return loc


def _message(err: Any) -> str:
    if err["type"] == "missing":
        return "required option is missing"
    if err["type"] == "extra_forbidden":
        return "unknown option (check the spelling against config.example.yaml)"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of options (indented under it, `key: value`)"
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # Never an internal class name ("... or instance of NotifyConfig").
    return re.sub(r" or (an )?instance of \w+", "", msg)


def format_validation_error(exc: ValidationError) -> list[str]:
    return [
        redact(f"{_loc(err['loc']) or 'config'}: {_message(err)}")
        for err in exc.errors(include_input=False, include_url=False)
    ]


def _written(node: Any, path: tuple[int | str, ...]) -> bool:
    """Whether the user's own mapping `node` holds `path`."""
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _source(loc: tuple[int | str, ...], sources: Sources) -> str | None:
    """The flag or variable behind the value at `loc` (or behind a section holding it)."""
    path = tuple("*" if isinstance(p, int) else str(p) for p in loc)
    for end in range(len(path), 0, -1):
        if path[:end] in sources:
            return sources[path[:end]]
    return None


def _where(loc: tuple[int | str, ...], sources: Sources) -> str:
    at = _loc(loc) or "config"
    source = _source(loc, sources)
    if source is None:
        return at
    # A key pasted into a variable's name (CM_MQTT_BRIDGE__cm-…) is not echoed either.
    return f"{_KEY_SHAPED_RE.sub('…', source)} ({at})"


def _user_errors(
    exc: ValidationError, raw: dict[str, Any], key_failed: set[int], sources: Sources
) -> list[str]:
    """One line per mistake the user made, at the path they wrote it: the top-level `alerts`
    are merged into every account, so their mistakes are reported once, at `alerts…`; an
    account whose key file could not be read is not also "missing its key"."""
    errors = _pair_typos(exc.errors(include_input=False, include_url=False))
    top = {(tuple(e["loc"][1:]), e["msg"]) for e in errors if e["loc"][:1] == ("alerts",)}
    accounts = raw.get("accounts")
    lines: list[str] = []
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) >= 3 and loc[0] == "accounts" and isinstance(loc[1], int):
            if loc[2:] == ("api_key",) and loc[1] in key_failed:
                continue
            if loc[2] == "alerts" and (loc[3:], err["msg"]) in top:
                own = accounts[loc[1]].get("alerts") if isinstance(accounts, list) else None
                if not _written(own, loc[3:]):
                    continue
        lines.append(redact(f"{_where(loc, sources)}: {_message(err)}"))
    return lines


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config section (model) a field holds, through Optional, tuple and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def known_options(path: tuple[int | str, ...]) -> list[str]:
    """The options the section at `path` accepts (empty when `path` is no section)."""
    model: type[BaseModel] = Config
    for part in path:
        if isinstance(part, int):  # an item of a list (accounts[0])
            continue
        field = model.model_fields.get(str(part))
        sub = _model_in(field.annotation) if field is not None else None
        if sub is None:
            return []
        model = sub
    names = list(model.model_fields)
    # Read (and removed) before validation, so the model does not list it.
    return [*names, "api_key_file"] if model is AccountConfig else names


def _pair_typos(errors: list[Any]) -> list[Any]:
    """A misspelt option is one mistake, not two ("belo: unknown" and "below: missing"): it
    names the closest option by spelling, and the option it meant is not also "missing"."""
    missing = {
        (tuple(e["loc"][:-1]), str(e["loc"][-1])): e
        for e in errors
        if e["type"] == "missing" and e["loc"]
    }
    import difflib  # only for a config with errors: `run` does not load it otherwise

    out: list[Any] = []
    meant: set[int] = set()
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden" and loc:
            typed = str(loc[-1])
            close = difflib.get_close_matches(typed, known_options(loc[:-1]), n=1)
            if not close:
                # Less alike, but a required option that is missing is likely what was meant.
                required = [name for parent, name in missing if parent == loc[:-1]]
                close = difflib.get_close_matches(typed, required, n=1, cutoff=0.5)
            if close:
                # api_key_file stands for api_key: meaning it, api_key is not missing either.
                for name in {close[0], close[0].removesuffix("_file")}:
                    if (loc[:-1], name) in missing:
                        meant.add(id(missing[(loc[:-1], name)]))
                err = {**err, "type": "typo", "msg": f"unknown option; did you mean {close[0]}?"}
        out.append(err)
    return [e for e in out if id(e) not in meant]


def _read_secret_files(merged: dict[str, Any], problems: list[str]) -> None:
    """A channel's `X_file` option: the secret X, read from that file here, so no config
    model reads a file. Mutates `merged`."""
    notify = merged.get("notify")
    if not isinstance(notify, dict):
        return
    for name, section in notify.items():
        if not isinstance(section, dict):
            continue
        options = known_options(("notify", name))
        for key, path in list(section.items()):
            secret = key.removesuffix("_file")
            if secret == key or secret not in options or not isinstance(path, str):
                continue  # not a secret file (a wrong type is the model's to report)
            if section.get(secret) is not None:
                problems.append(f"notify.{name}: give {secret} or {key}, not both")
                continue
            try:
                section[secret] = read_secret(Path(path), key).strip()
            except FileProblem as exc:
                problems.append(f"notify.{name}: {exc}")


def load_config(
    *,
    config_path: Path | None = None,
    env: Mapping[str, str],
    cli: Mapping[str, Any] | None = None,
    cli_sources: Mapping[tuple[str, ...], str] | None = None,
    default_key_file: Path | None = None,
    need_keys: bool = True,
) -> Config:
    """Build the Config: CLI > env > YAML file > defaults. Raises ConfigError.

    `cli_sources` names the flag behind each CLI value (its config path -> "--interval"), so a
    problem names the flag. `default_key_file` (where `config set-api-key` stores a key) is
    used only when neither the file nor CROSSMODEL_API_KEY defines an account. Without
    `need_keys` (commands that only read local data) no key is read or checked.
    """
    cli = dict(cli or {})
    cli_url = cli.pop("api_url", None)
    if config_path is None and env.get(CONFIG_ENV):
        config_path = Path(env[CONFIG_ENV])
    sources: Sources = {}
    merged = merge(file_layer(config_path), env_layer(env, sources), cli)
    sources.update(cli_sources or {})
    problems: list[str] = []
    if need_keys:
        key_failed = _resolve_accounts(merged, env, cli_url, default_key_file, problems, sources)
    else:
        key_failed = _without_keys(merged)
    if "accounts" not in merged:
        merged["accounts"] = []
    secret_problems: list[str] = []  # reported after the sections before `notify`
    _read_secret_files(merged, secret_problems)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_user_errors(exc, merged, key_failed, sources))
        raise ConfigError(problems + secret_problems) from None
    if problems or secret_problems:
        raise ConfigError(problems + secret_problems)
    return config
