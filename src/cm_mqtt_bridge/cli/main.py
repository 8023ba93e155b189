"""Command line: the parser and the dispatch to each command (bodies of the larger ones live
in their own modules). Exit 0 ok, 1 upstream, 2 config, 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.settings import (
    CONFIG_ENV,
    Config,
    ConfigError,
    load_config,
    unknown_account,
)

# Each command's own module is imported when that command runs: `run` starts without
# loading what only `demo`, `check` or `dashboard` need.
from ..core.redact import RedactingFilter
from ..exits import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE
from ..service.bridge import StartupError, run_service
from .errors import fail
from .keyfile import cmd_set_api_key, default_key_file

log = logging.getLogger("cm_mqtt_bridge")


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
  141  the output's reader went away (`| head`): stops quietly
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


GLOBAL_FLAGS = (
    "--config",
    "--verbose",
    "--api-url",
    "--mqtt-host",
    "--mqtt-port",
    "--mqtt-username",
    "--interval",
    "--data-dir",
)
BASE = ("--config", "--verbose")
MQTT = ("--mqtt-host", "--mqtt-port", "--mqtt-username")
_GLOBAL_HELP = {
    "--config": "YAML config file (CM_MQTT_BRIDGE_CONFIG)",
    "--verbose": "debug logging: one line per poll",
    "--api-url": "CrossModel API base URL, one account (CROSSMODEL_API_URL)",
    "--mqtt-host": "MQTT broker host (MQTT_HOST)",
    "--mqtt-port": "MQTT broker port (MQTT_PORT)",
    "--mqtt-username": "MQTT user name (MQTT_USERNAME)",
    "--interval": "poll interval in seconds (>= 30)",
    "--data-dir": "where the state database lives (./data)",
}


def global_flags(*applies: str) -> argparse.ArgumentParser:
    """The global flags, given before or after a command. Every command accepts all of them
    (one command line suits them all), but its --help lists only those in `applies`."""
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets the same flags stand before or after the command without clobbering.
    s = argparse.SUPPRESS
    helps = {flag: text if flag in applies else s for flag, text in _GLOBAL_HELP.items()}
    g = parent.add_argument_group("global options (before or after the command)")
    g.add_argument("--config", "-c", type=Path, default=s, help=helps["--config"])
    g.add_argument("-v", "--verbose", action="count", default=s, help=helps["--verbose"])
    g.add_argument("--api-url", default=s, help=helps["--api-url"])
    g.add_argument("--mqtt-host", default=s, help=helps["--mqtt-host"])
    g.add_argument("--mqtt-port", type=int, default=s, help=helps["--mqtt-port"])
    g.add_argument("--mqtt-username", default=s, help=helps["--mqtt-username"])
    g.add_argument("--interval", type=int, default=s, help=helps["--interval"])
    g.add_argument("--data-dir", default=s, help=helps["--data-dir"])
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = global_flags(*GLOBAL_FLAGS)

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
        sub,
        "status",
        "Poll every account once and print its wallet.",
        parents=[global_flags(*BASE, "--api-url")],
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
        parents=[global_flags(*BASE, "--api-url", *MQTT)],
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
        parents=[global_flags(*BASE, *MQTT)],
    )
    test_alert.add_argument("--account", help="the account it names (default: the first)")
    health = _command(
        sub,
        "healthcheck",
        "Ask a running bridge whether it is healthy (its /healthz); exit 0 healthy, 1 not.",
        parents=[global_flags(*BASE)],
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
        parents=[global_flags("--verbose", "--mqtt-host", "--mqtt-port")],
    )
    demo.add_argument("--seconds", type=float, default=70.0, help="how long to run (70)")
    history = _command(
        sub,
        "history",
        "Export the recorded balance and spend samples as CSV.",
        "Reads only the data directory and the config (no API key needed). Exit 1: no history "
        "yet; 2: unknown account or unreadable database.",
        parents=[global_flags(*BASE, "--data-dir")],
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
        "Reads only the config (no API key needed).",
        parents=[global_flags(*BASE)],
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
        parents=[global_flags("--verbose")],
    )
    setkey.add_argument(
        "--stdin", action="store_true", help="read the key from stdin even from a terminal"
    )
    setkey.add_argument(
        "--file", type=Path, help="where to store it (default: ~/.config/cm-mqtt-bridge/api_key)"
    )
    return parser


# The flag behind each config path the CLI layer sets, for error messages.
CLI_FLAGS: dict[tuple[str, ...], str] = {
    ("mqtt", "host"): "--mqtt-host",
    ("mqtt", "port"): "--mqtt-port",
    ("mqtt", "username"): "--mqtt-username",
    ("poll", "interval"): "--interval",
    ("data_dir",): "--data-dir",
}


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


def _given(layer: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = layer
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


# Commands that only read local data (the database, the config): no API key needed.
KEYLESS_COMMANDS = frozenset({"history", "dashboard"})


def load(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    layer = cli_layer(args)
    return load_config(
        config_path=getattr(args, "config", None),
        env=env,
        cli=layer,
        cli_sources={path: flag for path, flag in CLI_FLAGS.items() if _given(layer, path)},
        default_key_file=default_key_file(env),
        need_keys=args.command not in KEYLESS_COMMANDS,
    )


# ---- entry point --------------------------------------------------------------------------


def print_config_error(exc: ConfigError) -> int:
    fail("invalid configuration:")
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        code = _main(argv, env)
        # Short output is still in the buffer: a closed pipe shows only now.
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it: no traceback
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`check | head -1`): stop quietly, as `git log | head` does.
        _discard_stdout()
        return EXIT_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to flush
        pass


def _main(argv: Sequence[str] | None, env: Mapping[str, str] | None) -> int:
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if getattr(args, "verbose", 0) else "INFO")
    if args.command == "config":
        return cmd_set_api_key(args, env, sys.stdin)
    if args.command == "demo":
        from .demo import demo_options, run_demo

        return asyncio.run(run_demo(args.seconds, env, sys.stdout, options=demo_options(args)))
    if args.command == "healthcheck":
        from .healthcheck import cmd_healthcheck, health_url

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
    return _with_config(args, config, env)


def _with_config(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    """The commands that need the configuration, loaded and valid."""
    if args.command == "status":
        from .status import cmd_status

        return cmd_status(config, args.json, sys.stdout)
    if args.command == "run":
        try:
            asyncio.run(run_service(config))
        except StartupError as exc:
            return fail(str(exc))
        return EXIT_OK
    if args.command == "history":
        from .history_csv import cmd_history

        return cmd_history(config, args.account, args.since, sys.stdout)
    if args.command == "check":
        from .check import run_check

        source = str(getattr(args, "config", None) or env.get(CONFIG_ENV) or "environment")
        return asyncio.run(
            run_check(config, sys.stdout, show_discovery=args.show_discovery, source=source)
        )
    if args.command == "test-alert":
        from .testalert import send_test_alert

        accounts = {a.id: a for a in config.accounts}
        if args.account is not None and args.account not in accounts:
            return fail(unknown_account(args.account, list(accounts)))
        acc = accounts[args.account] if args.account else config.accounts[0]
        return asyncio.run(send_test_alert(config, acc, sys.stdout))
    if args.command == "dashboard":
        from .dashboard import cmd_dashboard

        return cmd_dashboard(config.accounts, args.account, args.all, sys.stdout)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
