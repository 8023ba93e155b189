"""The README's `status` example is what the command prints for the same numbers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.conftest import KEY
from tests.helpers import run_main
from tests.standin import CrossModelStandin

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_status_block() -> str:
    match = re.search(r"```text\n\$ cm-mqtt-bridge status\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no `status` example"
    return match.group(1)


async def test_readme_status_example_is_real(
    standin: CrossModelStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stand-in's default answer holds the README's numbers (holds 0.125: half-up 0.13).
    assert standin.credits["uncollected_micro"] == 125_000
    config = tmp_path / "config.yaml"
    config.write_text(
        f"accounts:\n  - id: main\n    name: Main\n    api_key: {KEY}\n    api_url: {standin.url}\n"
    )
    result = await asyncio.to_thread(
        run_main, capsys, "status", "--config", str(config), env={}, secrets=(KEY,)
    )
    assert result.code == 0, result.err
    assert result.out == readme_status_block()


def test_the_quick_start_leads_with_the_safe_steps_and_says_how_ci_runs_the_tests() -> None:
    text = README.read_text()
    quick = text[text.index("## Quick start") : text.index("## Commands")]
    commands = re.findall(r"```bash\n\s*(.*?)\n\s*```", quick)
    assert commands == [
        "./scripts/cm-mqtt-bridge demo",
        "CROSSMODEL_API_KEY=cm-your-key MQTT_HOST=localhost ./scripts/cm-mqtt-bridge check",
        "CROSSMODEL_API_KEY=cm-your-key MQTT_HOST=localhost ./scripts/cm-mqtt-bridge run",
        "./scripts/test",
    ]
    root = README.parent
    ci_run = (root / ".ci" / "run").read_text()
    assert ci_run.rstrip().endswith("exec ./scripts/test")
    assert "`.ci/run`, the check a change must pass to land, runs exactly this command" in quick
    workflow = (root / ".github" / "workflows" / "ci.yml").read_text()
    assert 'python: ["3.11", "3.12", "3.13"]' in workflow
    assert "run: ./scripts/test" in workflow
    assert "--resolution lowest-direct" in workflow
    assert "run: .venv/bin/pytest -q" in workflow
