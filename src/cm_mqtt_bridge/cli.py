"""Command line: `status`, `run`, `check`, `config set-api-key`. Exit 0 ok, 1 upstream, 2 config."""

from __future__ import annotations

import argparse
import asyncio
import csv
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

from . import __version__, dashboard
from .alerts.store import DB_NAME, Store, StoreError
from .api import ApiError
from .clock import SystemClock
from .config import Config, ConfigError, load_config, normalize_api_key
from .demo import run_demo
from .discovery import device_payload
from .entities import entities_for
from .model import Snapshot, UsageState
from .money import format_money, format_plain
from .publisher import Publisher
from .redact import REDACTED, RedactingFilter
from .service import StartupError, run_service
from .status import poll_all, render_status, snapshot_json
from .topics import Topics

EXIT_OK, EXIT_UPSTREAM, EXIT_CONFIG = 0, 1, 2
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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets the same flags stand before or after the command without clobbering.
    s = argparse.SUPPRESS
    common.add_argument("--config", "-c", type=Path, default=s, help="YAML config file")
    common.add_argument("-v", "--verbose", action="count", default=s, help="more logging")
    common.add_argument("--api-url", default=s, help="CrossModel API base URL (one account)")
    common.add_argument("--mqtt-host", default=s)
    common.add_argument("--mqtt-port", type=int, default=s)
    common.add_argument("--mqtt-username", default=s)
    common.add_argument("--interval", type=int, default=s, help="poll interval in seconds")
    common.add_argument("--data-dir", default=s)

    parser = argparse.ArgumentParser(
        prog="cm-mqtt-bridge",
        description="CrossModel wallet balance and spend on MQTT / Home Assistant.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"cm-mqtt-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", parents=[common], help="poll once and print the wallet")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("run", parents=[common], help="run the bridge (MQTT / Home Assistant)")
    sub.add_parser(
        "check",
        parents=[common],
        help="validate config, poll once, connect to the broker, print discovery (dry run)",
    )
    health = sub.add_parser(
        "healthcheck", help="ask a running bridge's /healthz (exit 0 healthy, 1 not)"
    )
    health.add_argument(
        "--url",
        help="default: http://127.0.0.1:$CM_MQTT_BRIDGE__HEALTH__PORT/healthz (port 8099)",
    )
    demo = sub.add_parser(
        "demo", help="see the whole thing work in a minute: simulator, broker, bridge, alerts"
    )
    demo.add_argument("--seconds", type=float, default=70.0, help="how long to run (70)")
    history = sub.add_parser("history", parents=[common], help="export recorded history")
    history.add_argument("--csv", action="store_true", required=True, help="CSV on stdout")
    history.add_argument("--account", help="only this account id")
    history.add_argument(
        "--since", type=parse_since, help="only samples at or after DATE (YYYY-MM-DD, UTC)"
    )
    dash = sub.add_parser("dashboard", parents=[common], help="print a Home Assistant dashboard")
    which = dash.add_mutually_exclusive_group()
    which.add_argument("--account", help="only this account id")
    which.add_argument("--all", action="store_true", help="also an overview of every account")
    cfg = sub.add_parser("config", help="manage configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    setkey = cfg_sub.add_parser("set-api-key", help="store an API key in a secret file (mode 0600)")
    setkey.add_argument(
        "--stdin", action="store_true", required=True, help="read the key from stdin"
    )
    setkey.add_argument("--file", type=Path, help="where to store it (default: ~/.config/...)")
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


# ---- check -------------------------------------------------------------------------------


async def broker_reachable(config: Config) -> str | None:
    """None when a connection to the broker works, else the reason."""
    topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)

    async def ignore(topic: str, payload: bytes) -> None:
        return None

    publisher = Publisher(config.mqtt, topics, SystemClock(), subscriptions=(), on_message=ignore)
    return await publisher.probe()


async def cmd_check(config: Config, out: TextIO) -> int:
    ok = True
    topics = Topics(base=config.mqtt.base_topic, prefix=config.mqtt.discovery_prefix)
    out.write("Configuration: valid\n")
    results = await poll_all(config, SystemClock())
    currencies: dict[str, str | None] = {}
    for (acc_id, _name, result), acc in zip(results, config.accounts, strict=True):
        if isinstance(result, Snapshot):
            currencies[acc_id] = result.currency
            out.write(
                f"Account {acc_id}: OK ({acc.api_url}, key {REDACTED}) "
                f"balance {format_money(result.balance_micro, result.currency)}\n"
            )
        else:
            ok = False
            currencies[acc_id] = None
            out.write(f"Account {acc_id}: FAILED {result.status}: {result}\n")
    problem = await broker_reachable(config)
    where = f"{config.mqtt.host}:{config.mqtt.port}"
    if problem is None:
        out.write(f"MQTT broker {where}: OK\n")
    else:
        ok = False
        out.write(f"MQTT broker {where}: FAILED: {problem}\n")
    out.write("\nDiscovery (dry run, nothing published):\n")
    for acc in config.accounts:
        payload = device_payload(
            account_id=acc.id,
            account_name=acc.name,
            topics=topics,
            currency=currencies[acc.id],
            qos=config.mqtt.qos,
            entities=entities_for(acc.alerts.rules()),
        )
        out.write(f"\n{topics.device(acc.id)} (retained)\n{json.dumps(payload, indent=2)}\n")
    out.write("\n" + ("All checks passed.\n" if ok else "Some checks FAILED.\n"))
    return EXIT_OK if ok else EXIT_UPSTREAM


# ---- healthcheck ---------------------------------------------------------------------------


async def cmd_healthcheck(url: str) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session,
            session.get(url) as resp,
        ):
            body = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"unhealthy: {url}: {exc or type(exc).__name__}")
        return EXIT_UPSTREAM
    print(body)
    return EXIT_OK if resp.status == 200 else EXIT_UPSTREAM


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
    try:
        key = normalize_api_key(stdin.read())
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


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if getattr(args, "verbose", 0) else "INFO")
    if args.command == "config":
        return cmd_set_api_key(args, env, sys.stdin)
    if args.command == "demo":
        return asyncio.run(run_demo(args.seconds, env, sys.stdout))
    if args.command == "healthcheck":
        # No config needed: a container's HEALTHCHECK must not depend on secrets.
        port = env.get("CM_MQTT_BRIDGE__HEALTH__PORT") or "8099"
        return asyncio.run(cmd_healthcheck(args.url or f"http://127.0.0.1:{port}/healthz"))
    try:
        config = load(args, env)
    except ConfigError as exc:
        print("cm-mqtt-bridge: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
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
        return asyncio.run(cmd_check(config, sys.stdout))
    if args.command == "dashboard":
        return dashboard.command(config.accounts, args.account, args.all, sys.stdout, sys.stderr)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
