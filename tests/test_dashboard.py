"""`cm-mqtt-bridge dashboard`: the Lovelace YAML names only entities the bridge creates.

Set UPDATE_GOLDEN=1 to rewrite tests/golden/dashboard_all.yaml after an intended change (and
read the diff before committing it).
"""

from __future__ import annotations

import os
import re
import unicodedata
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


def _slug(text: str) -> str:
    """Home Assistant's slugify for the names used here: ASCII-folded, [a-z0-9] runs joined by _."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", folded.lower()).strip("_")


def ha_entity_id(version: tuple[int, int], device_name: str, cfg: dict[str, Any]) -> str:
    """The entity id a Home Assistant of this version gives a newly discovered MQTT component,
    restated from homeassistant/components/mqtt/entity.py of 2024.11, 2025.4 and 2026.11 and
    core PRs 151775/151996 (2025.10): up to 2025.9 it reads `object_id`; from 2025.10
    `default_entity_id`, which wins over `object_id`; from 2026.4 `object_id` is dropped.
    Without them the id is the slug of "<device name> <entity name>"."""
    platform = cfg["p"]
    if version >= (2025, 10) and "default_entity_id" in cfg:
        return f"{platform}.{cfg['default_entity_id'].partition('.')[2]}"
    if version < (2026, 4) and "object_id" in cfg:
        return f"{platform}.{_slug(cfg['object_id'])}"
    return f"{platform}.{_slug(device_name + ' ' + cfg['name'])}"


# 2024.11: the oldest the README promises; 2025.4 and 2026.11 checked in the harness.
HA_VERSIONS = [(2024, 11), (2025, 4), (2025, 9), (2025, 10), (2026, 3), (2026, 4), (2026, 11)]


@pytest.mark.parametrize("version", HA_VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_every_home_assistant_version_registers_the_ids_the_dashboard_names(
    config: Config, version: tuple[int, int]
) -> None:
    # The names differ from the ids on purpose: "Team" for team-2, "Low balance alert" for
    # alert_low_balance. An id derived from them would miss the dashboard's.
    doc = yaml.safe_load(dashboard.render_yaml(config.accounts, overview=True))
    registered: set[str] = set()
    for acc in config.accounts:
        payload = device_payload(
            account_id=acc.id,
            account_name=acc.name,
            topics=Topics(base="cm_mqtt_bridge", prefix="homeassistant"),
            currency="USD",
            qos=1,
            entities=entities_for(acc.alerts.rules()),
        )
        ids = {ha_entity_id(version, payload["dev"]["name"], c) for c in payload["cmps"].values()}
        assert ids == created_entity_ids(acc)
        registered |= ids
    used = entity_ids(doc)
    assert used <= registered, sorted(used - registered)


def test_the_version_model_tells_the_ids_apart() -> None:
    # The model above must be able to fail: without object_id, HA 2025.4 derives the ids from
    # the names (checked in the harness: binary_sensor.crossmodel_main_low_balance_alert).
    cfg = {"p": "binary_sensor", "name": "Low balance alert"}
    cfg["default_entity_id"] = "binary_sensor.crossmodel_main_alert_low_balance"
    assert ha_entity_id((2025, 4), "CrossModel Main", cfg) == (
        "binary_sensor.crossmodel_main_low_balance_alert"
    )
    assert ha_entity_id((2026, 11), "CrossModel Main", cfg) == cfg["default_entity_id"]
    cfg["object_id"] = "crossmodel_main_alert_low_balance"
    assert ha_entity_id((2025, 4), "CrossModel Main", cfg) == cfg["default_entity_id"]
    assert ha_entity_id((2026, 11), "CrossModel Main", {**cfg, "default_entity_id": "x.y"}) == (
        "binary_sensor.y"
    )


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
