"""`cm-mqtt-bridge dashboard`: the Lovelace YAML names only entities the bridge creates.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/dashboard_all.yaml after an intended change (and
read the diff before committing it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cm_mqtt_bridge.cli.main import main
from cm_mqtt_bridge.config.settings import AccountConfig, Config
from cm_mqtt_bridge.ha import dashboard
from cm_mqtt_bridge.ha.discovery import device_payload
from cm_mqtt_bridge.ha.entities import entities_for
from cm_mqtt_bridge.ha.topics import Topics

GOLDEN = Path(__file__).parent / "golden" / "dashboard_all.yaml"
KEY = "cm-dashboard-0123456789abcdef"
# Two accounts: one with every kind of rule, one (an id with a '-') with only api_down, so it
# gets alert cards but no thresholds and no gauge bands.
CONFIG_YAML = f"""\
accounts:
  - id: main
    name: Main
    api_key: {KEY}
    alerts:
      low_balance: {{below: 2.50}}
      runway: {{below_days: 3}}
      budget: {{daily: 2.00, monthly: 40}}
      api_down: {{after: 15m}}
      auth_failed: true
      topup: true
      spike: {{factor: 4}}
  - id: team-2
    name: Team
    api_key: {KEY}
    alerts:
      api_down: true
"""
# Only cards that ship with Home Assistant (2024.11+); never custom:… cards.
BUILT_IN_CARDS = {
    "entities",
    "gauge",
    "statistics-graph",
    "history-graph",
    "logbook",
    "glance",
    "vertical-stack",
}
ENTITY_ID = re.compile(r"^([a-z_]+)\.([a-z0-9_]+)$")
PLATFORMS = {"sensor", "binary_sensor", "button", "number", "event"}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML, encoding="utf-8")
    return path


@pytest.fixture
def config(config_file: Path) -> Config:
    return Config.model_validate(yaml.safe_load(config_file.read_text(encoding="utf-8")))


def run_cli(config_file: Path, *args: str) -> list[str]:
    return ["--config", str(config_file), "dashboard", *args]


def created_entity_ids(acc: AccountConfig) -> set[str]:
    """What the bridge's discovery announces for this account (its default_entity_id)."""
    payload = device_payload(
        account_id=acc.id,
        account_name=acc.name,
        topics=Topics(base="cm_mqtt_bridge", prefix="homeassistant"),
        currency="USD",
        qos=1,
        entities=entities_for(acc.alerts.rules()),
    )
    return {cmp["default_entity_id"] for cmp in payload["cmps"].values()}


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def entity_ids(node: Any) -> set[str]:
    """Every string that looks like an entity id, wherever it stands in the config."""
    found = {s for s in strings(node) if ENTITY_ID.match(s)}
    assert all(s.split(".")[0] in PLATFORMS for s in found), found
    return found


def cards(node: Any) -> Iterator[dict[str, Any]]:
    for card in node.get("cards", []):
        yield card
        yield from cards(card)


def view(doc: dict[str, Any], path: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in doc["views"] if v["path"] == path]
    assert len(found) == 1, path
    return found[0]


def test_parses_as_yaml_with_one_view_per_account(config: Config) -> None:
    doc = yaml.safe_load(dashboard.render_yaml(config.accounts))
    assert doc["title"] == "CrossModel"
    assert [(v["title"], v["path"]) for v in doc["views"]] == [("Main", "main"), ("Team", "team-2")]


def test_only_built_in_card_types(config: Config) -> None:
    doc = yaml.safe_load(dashboard.render_yaml(config.accounts, overview=True))
    used = {card["type"] for v in doc["views"] for card in cards(v)}
    assert used <= BUILT_IN_CARDS, used - BUILT_IN_CARDS
    assert {"entities", "gauge", "statistics-graph", "history-graph", "logbook"} <= used


def test_every_entity_id_is_one_discovery_creates_for_that_account(config: Config) -> None:
    doc = yaml.safe_load(dashboard.render_yaml(config.accounts, overview=True))
    everything: set[str] = set()
    for acc in config.accounts:
        created = created_entity_ids(acc)
        everything |= created
        used = entity_ids(view(doc, acc.id))
        assert used, acc.id
        assert used <= created, used - created
    overview = entity_ids(view(doc, "overview"))
    assert overview == {
        "sensor.crossmodel_main_available",
        "sensor.crossmodel_team_2_available",
    }
    assert overview <= everything


def test_alert_cards_only_for_an_account_with_rules(config: Config) -> None:
    no_rules = config.accounts[0].model_copy(update={"alerts": type(config.alerts)()})
    assert no_rules.alerts.rule_names() == ()
    doc = dashboard.account_view(no_rules)
    used = entity_ids(doc)
    assert not any(e.startswith(("event.", "number.")) or "_alert" in e for e in used)
    assert "logbook" not in {c["type"] for c in cards(doc)}
    assert used <= created_entity_ids(no_rules)
    with_rules = dashboard.account_view(config.accounts[0])
    assert "event.crossmodel_main_alert" in entity_ids(with_rules)
    assert "number.crossmodel_main_low_balance_below" in entity_ids(with_rules)


def test_gauge_bands_follow_the_low_balance_threshold(config: Config) -> None:
    main_view, team_view = (dashboard.account_view(acc) for acc in config.accounts)
    (gauge,) = [c for c in cards(main_view) if c["type"] == "gauge"]
    assert gauge["entity"] == "sensor.crossmodel_main_available"
    # below 2.50: red under the threshold (the alert fires), yellow to twice it, then green.
    assert gauge["severity"] == {"red": 0, "yellow": 2.5, "green": 5}
    assert (gauge["min"], gauge["max"]) == (0, 10)
    (plain,) = [c for c in cards(team_view) if c["type"] == "gauge"]
    assert "severity" not in plain  # no low-balance rule: no threshold to colour by


def test_spend_per_day_comes_from_long_term_statistics(config: Config) -> None:
    (graph,) = [c for c in cards(dashboard.account_view(config.accounts[0]))
                if c["type"] == "statistics-graph"]  # fmt: skip
    # Total spend never resets: its daily change is a day of spend in HA's own time zone.
    assert graph["entities"] == ["sensor.crossmodel_main_total_spend"]
    assert graph["stat_types"] == ["change"]
    assert (graph["period"], graph["days_to_show"]) == ("day", 30)


def test_cli_all_matches_the_golden_file(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_cli(config_file, "--all"), {"HOME": str(config_file.parent)}) == 0
    out = capsys.readouterr().out
    assert "&" not in out  # no YAML anchors: what a user pastes must read plainly
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(out, encoding="utf-8")
    assert out == GOLDEN.read_text(encoding="utf-8")
    assert [v["path"] for v in yaml.safe_load(out)["views"]] == ["overview", "main", "team-2"]


def test_cli_one_account(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_cli(config_file, "--account", "team-2"), {"HOME": "/nonexistent"}) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert [v["path"] for v in doc["views"]] == ["team-2"]
    assert all("crossmodel_team_2_" in e for e in entity_ids(doc))


def test_cli_unknown_account_is_a_config_error(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_cli(config_file, "--account", "nope"), {"HOME": "/nonexistent"}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown account 'nope' (configured: main, team-2)" in captured.err


def test_overview_path_never_hides_an_account_view() -> None:
    acc = AccountConfig(id="overview", api_key=KEY)
    doc = dashboard.dashboard([acc], overview=True)
    assert [v["path"] for v in doc["views"]] == ["overview", "account-overview"]


def test_cli_account_and_all_exclude_each_other(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(run_cli(config_file, "--all", "--account", "main"), {"HOME": "/nonexistent"})
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_needs_no_api_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The accounts and rules come from the config; the key file is not readable here.
    path = tmp_path / "config.yaml"
    path.write_text(
        f"accounts: [{{id: main, api_key_file: {tmp_path / 'missing'}}}]\n"
        "alerts: {low_balance: {below: 5}}\n"
    )
    assert main(["dashboard", "-c", str(path)], {"HOME": str(tmp_path)}) == 0
    captured = capsys.readouterr()
    assert "sensor.crossmodel_main_available" in captured.out, captured.err
    # No config at all: the one account the key variables would define.
    assert main(["dashboard"], {"HOME": str(tmp_path)}) == 0
    assert "sensor.crossmodel_default_available" in capsys.readouterr().out
