"""Command line: the parser and the dispatch to each command (bodies of the larger ones live
in their own modules). Exit 0 ok, 1 upstream, 2 config, 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from pydantic import ValidationError

from . import __version__, dashboard
from .alerts.store import DB_NAME, Store, StoreError
from .api import ApiError
from .check import run_check
from .clock import SystemClock
from .config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    HealthConfig,
    env_layer,
    file_layer,
    format_validation_error,
    load_config,
    merge,
    normalize_api_key,
)
from .demo import demo_options, run_demo
from .model import Snapshot, UsageState
from .money import format_plain
from .neterror import describe
from .redact import RedactingFilter
from .service import StartupError, run_service
from .status import poll_all, render_status, snapshot_json
from .testalert import send_test_alert

EXIT_OK, EXIT_UPSTREAM, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("cm_mqtt_bridge")


def default_key_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "cm-mqtt-bridge" / "api_key"


def parse_since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


EPILOG = """\
environment variables:
  CROSSMODEL_API_KEY        the API key (cm-...); without accounts in the file it defines
                            one account "default"
  CROSSMODEL_API_KEY_FILE   a file holding the key (Docker secrets), when the key is unset
  CROSSMODEL_API_URL        API base URL (default https://api.crossmodel.ai/v1)
  MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD
                            the broker
  CM_MQTT_BRIDGE_CONFIG     path of the YAML config file (same as --config)
  CM_MQTT_BRIDGE__<SECTION>__<KEY>
                            any other option, e.g. CM_MQTT_BRIDGE__POLL__INTERVAL=120
  Precedence: flags > environment > config file > defaults (see config.example.yaml).

exit codes:
  0    ok
  1    something upstream failed: the API, the broker, a notification channel
  2    invalid configuration (each problem is named) or a wrong argument
  130  interrupted (Ctrl-C)
"""


def _command(
    sub: Any, name: str, summary: str, more: str = "", parents: Sequence[Any] = ()
) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with the sentence that says what it does."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=list(parents),
        help=summary[0].lower() + summary[1:].rstrip("."),
        description=f"{summary} {more}".strip(),
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets the same flags stand before or after the command without clobbering.
    s = argparse.SUPPRESS
    g = common.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--config", "-c", type=Path, default=s, help="YAML config file (CM_MQTT_BRIDGE_CONFIG)"
    )
    g.add_argument(
        "-v", "--verbose", action="count", default=s, help="debug logging: one line per poll"
    )
    g.add_argument(
        "--api-url", default=s, help="CrossModel API base URL, one account (CROSSMODEL_API_URL)"
    )
    g.add_argument("--mqtt-host", default=s, help="MQTT broker host (MQTT_HOST)")
    g.add_argument("--mqtt-port", type=int, default=s, help="MQTT broker port (MQTT_PORT)")
    g.add_argument("--mqtt-username", default=s, help="MQTT user name (MQTT_USERNAME)")
    g.add_argument("--interval", type=int, default=s, help="poll interval in seconds (>= 30)")
    g.add_argument("--data-dir", default=s, help="where the state database lives (./data)")

    parser = argparse.ArgumentParser(
        prog="cm-mqtt-bridge",
        description="Your CrossModel wallet's balance and spend on MQTT / Home Assistant, "
        "with alerts to your phone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"cm-mqtt-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = _command(
        sub, "status", "Poll every account once and print its wallet.", parents=[common]
    )
    status.add_argument("--json", action="store_true", help="machine-readable, exact values")
    _command(
        sub,
        "run",
        "Run the bridge: poll, publish to MQTT / Home Assistant, send alerts.",
        "Stops cleanly on SIGTERM or Ctrl-C (publishes offline).",
        parents=[common],
    )
    check = _command(
        sub,
        "check",
        "Check that everything works, without publishing or notifying anything.",
        "One line per check (the config, each account's API, the broker, each notification "
        "channel); exit 0 only if all pass.",
        parents=[common],
    )
    check.add_argument(
        "--show-discovery",
        action="store_true",
        help="also print the discovery payloads Home Assistant would get",
    )
    test_alert = _command(
        sub,
        "test-alert",
        "Send one test notice through every configured channel.",
        "ntfy, the webhook, Apprise, and MQTT (the alerts topic and Home Assistant's Alert "
        "event, type 'test'); exit 0 only if all delivered. No alert state or history changes.",
        parents=[common],
    )
    test_alert.add_argument("--account", help="the account it names (default: the first)")
    health = _command(
        sub,
        "healthcheck",
        "Ask a running bridge whether it is healthy (its /healthz); exit 0 healthy, 1 not.",
        parents=[common],
    )
    health.add_argument(
        "--url",
        help="default: http://127.0.0.1:<health.port>/healthz, the port from the config "
        "(or CM_MQTT_BRIDGE__HEALTH__PORT; 8099)",
    )
    demo = _command(
        sub,
        "demo",
        "See the whole thing work in a minute: simulator, broker, bridge and alerts.",
        "Uses a private Mosquitto when one is installed (else the broker of MQTT_HOST/"
        "--mqtt-host) and its own topics, so it never shows up in Home Assistant.",
        parents=[common],
    )
    demo.add_argument("--seconds", type=float, default=70.0, help="how long to run (70)")
    history = _command(
        sub, "history", "Export the recorded balance and spend samples as CSV.", parents=[common]
    )
    history.add_argument("--csv", action="store_true", help="CSV on stdout (the default)")
    history.add_argument("--account", help="only this account id")
    history.add_argument(
        "--since", type=parse_since, help="only samples at or after DATE (YYYY-MM-DD, UTC)"
    )
    dash = _command(
        sub,
        "dashboard",
        "Print a ready Home Assistant dashboard (YAML) for the configured accounts.",
        parents=[common],
    )
    which = dash.add_mutually_exclusive_group()
    which.add_argument("--account", help="only this account id")
    which.add_argument("--all", action="store_true", help="also an overview of every account")
    cfg = _command(sub, "config", "Manage the configuration.")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    setkey = _command(
        cfg_sub,
        "set-api-key",
        "Store an API key in a file only you can read (mode 0600).",
        "Reads the key from stdin when it is not a terminal, else asks for it without echo.",
    )
    setkey.add_argument(
        "--stdin", action="store_true", help="read the key from stdin even from a terminal"
    )
    setkey.add_argument(
        "--file", type=Path, help="where to store it (default: ~/.config/cm-mqtt-bridge/api_key)"
    )
    return parser


def cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as a config layer (the highest precedence)."""
    out: dict[str, Any] = {}
    mqtt = {
        key: getattr(args, f"mqtt_{key}")
        for key in ("host", "port", "username")
        if hasattr(args, f"mqtt_{key}")
    }
    if mqtt:
        out["mqtt"] = mqtt
    if hasattr(args, "interval"):
        out["poll"] = {"interval": args.interval}
    if hasattr(args, "data_dir"):
        out["data_dir"] = args.data_dir
    if hasattr(args, "api_url"):
        out["api_url"] = args.api_url
    if getattr(args, "verbose", 0):
        out["log_level"] = "DEBUG"
    return out


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party loggers can print URLs and headers at DEBUG; keep them at WARNING.
    for noisy in ("aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # paho logs every packet at DEBUG: far too much for -v (and it slows big publishes).
    logging.getLogger("cm_mqtt_bridge.mqtt").setLevel(max(logging.INFO, root.level))
    # Apprise plugins log request URLs and payloads (tokens, user keys) at DEBUG: never those.
    logging.getLogger("apprise").setLevel(logging.WARNING)


def load(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    return load_config(
        config_path=getattr(args, "config", None),
        env=env,
        cli=cli_layer(args),
        default_key_file=default_key_file(env),
    )


# ---- status -------------------------------------------------------------------------------


def cmd_status(config: Config, as_json: bool, out: TextIO) -> int:
    results = asyncio.run(poll_all(config, SystemClock()))
    failed = any(isinstance(r, ApiError) for _, _, r in results)
    if as_json:
        doc = {
            "accounts": [
                {"id": acc_id, "name": name, "ok": True, **snapshot_json(r)}
                if isinstance(r, Snapshot)
                else {
                    "id": acc_id,
                    "name": name,
                    "ok": False,
                    "api_status": r.status,
                    "error": str(r),
                }
                for acc_id, name, r in results
            ]
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        blocks = []
        for acc_id, name, r in results:
            if isinstance(r, Snapshot):
                blocks.append(render_status(name, acc_id, r))
            else:
                blocks.append(f"CrossModel · {name} ({acc_id})\n  Error      {r.status}: {r}")
        out.write("\n\n".join(blocks) + "\n")
    if any(isinstance(r, Snapshot) and r.usage_state != UsageState.OK for _, _, r in results):
        log.warning("usage figures were not available for every account (balance is current)")
    return EXIT_UPSTREAM if failed else EXIT_OK


# ---- healthcheck ---------------------------------------------------------------------------


async def cmd_healthcheck(url: str) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session,
            session.get(url) as resp,
        ):
            body = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"unhealthy: {url}: {describe(exc)}")
        return EXIT_UPSTREAM
    print(body)
    return EXIT_OK if resp.status == 200 else EXIT_UPSTREAM


def health_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """--url, else /healthz on the port the config (file, then environment) gives; no key is
    needed, so a container's HEALTHCHECK never depends on secrets."""
    if args.url:
        return str(args.url)
    path = getattr(args, "config", None)
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    layer = merge(file_layer(path), env_layer(env)).get("health")
    try:
        health = HealthConfig.model_validate(layer if isinstance(layer, dict) else {})
    except ValidationError as exc:
        raise ConfigError([f"health.{p}" for p in format_validation_error(exc)]) from None
    host = health.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a listening address, not a bind
        host = "127.0.0.1"  # listening everywhere: ask over loopback
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{health.port}/healthz"


# ---- history -----------------------------------------------------------------------------

HISTORY_COLUMNS = (
    "account",
    "time",
    "balance",
    "holds",
    "available",
    "spend_today",
    "spend_week",
    "spend_month",
    "spent_total",
)


def cmd_history(config: Config, account: str | None, since: datetime | None, out: TextIO) -> int:
    path = config.data_dir / DB_NAME
    if not path.exists():
        print(f"no history yet: {path} does not exist (run the bridge first)", file=sys.stderr)
        return EXIT_UPSTREAM
    if account is not None and account not in {a.id for a in config.accounts}:
        print(f"unknown account {account!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = Store.open(path)
    except StoreError as exc:
        print(f"cm-mqtt-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _write_history(store, account, since, out)
    except sqlite3.Error as exc:  # corrupt beyond what the quick check at open sees
        print(
            f"cm-mqtt-bridge: cannot read the state database {path}: {exc}; move the file "
            "aside and the bridge starts with a fresh one",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    finally:
        store.close()


def _plain(m: int | None) -> str:
    return "" if m is None else format_plain(m)


def _write_history(store: Store, account: str | None, since: datetime | None, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for acc_id, s in store.samples(account, since):
        writer.writerow(
            (
                acc_id,
                s.at.isoformat(),
                _plain(s.balance_micro),
                _plain(s.holds_micro),
                _plain(s.balance_micro - s.holds_micro),
                _plain(s.spend_day_micro),
                _plain(s.spend_week_micro),
                _plain(s.spend_month_micro),
                _plain(s.spent_total_micro),
            )
        )
    return EXIT_OK


# ---- config set-api-key -------------------------------------------------------------------


def write_secret_file(path: Path, secret: str) -> None:
    """Write atomically, mode 0600 from the first byte (no window where others can read it).

    The temporary file is created exclusively and never through a symlink, and removed if
    anything fails, so the key is never left behind elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, (secret + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_set_api_key(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO) -> int:
    if args.stdin or not stdin.isatty():
        raw = stdin.read()
    else:
        raw = getpass.getpass("CrossModel API key (input hidden): ")
    try:
        key = normalize_api_key(raw)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    path = args.file or default_key_file(env)
    try:
        write_secret_file(path, key)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"API key stored in {path} (mode 0600). Point api_key_file at it, or leave it there.")
    return EXIT_OK


# ---- entry point --------------------------------------------------------------------------


def print_config_error(exc: ConfigError) -> int:
    print("cm-mqtt-bridge: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        return _main(argv, env)
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it: no traceback
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None, env: Mapping[str, str] | None) -> int:
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if getattr(args, "verbose", 0) else "INFO")
    if args.command == "config":
        return cmd_set_api_key(args, env, sys.stdin)
    if args.command == "demo":
        return asyncio.run(run_demo(args.seconds, env, sys.stdout, options=demo_options(args)))
    if args.command == "healthcheck":
        try:
            url = health_url(args, env)
        except ConfigError as exc:
            return print_config_error(exc)
        return asyncio.run(cmd_healthcheck(url))
    try:
        config = load(args, env)
    except ConfigError as exc:
        return print_config_error(exc)
    setup_logging(config.log_level, config.secrets())
    if args.command == "status":
        return cmd_status(config, args.json, sys.stdout)
    if args.command == "run":
        try:
            asyncio.run(run_service(config))
        except StartupError as exc:
            print(f"cm-mqtt-bridge: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return EXIT_OK
    if args.command == "history":
        return cmd_history(config, args.account, args.since, sys.stdout)
    if args.command == "check":
        source = str(getattr(args, "config", None) or env.get(CONFIG_ENV) or "environment")
        return asyncio.run(
            run_check(config, sys.stdout, show_discovery=args.show_discovery, source=source)
        )
    if args.command == "test-alert":
        accounts = {a.id: a for a in config.accounts}
        if args.account is not None and args.account not in accounts:
            print(f"unknown account {args.account!r}", file=sys.stderr)
            return EXIT_CONFIG
        acc = accounts[args.account] if args.account else config.accounts[0]
        return asyncio.run(send_test_alert(config, acc, sys.stdout))
    if args.command == "dashboard":
        return dashboard.command(config.accounts, args.account, args.all, sys.stdout, sys.stderr)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
