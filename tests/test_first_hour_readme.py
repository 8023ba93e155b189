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
