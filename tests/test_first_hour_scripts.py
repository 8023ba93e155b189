"""scripts/cm-mqtt-bridge on a first run: one line before creating .venv, no pyenv noise while
probing Python versions, a one-line hint when python3-venv is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYENV_SHIM = """#!/bin/bash
echo "pyenv: $(basename "$0"): command not found" >&2
echo >&2
echo "The \\`$(basename "$0")' command exists in these Python versions:" >&2
exit 127
"""
PYTHON3 = """#!/bin/bash
if [ "$1" = "-c" ]; then exit 0; fi
if [ "$1 $2" = "-m venv" ]; then
  {venv}
fi
"""
NO_VENV = """echo "The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv package" ; exit 1"""
FAKE_VENV = """mkdir -p "$3/bin"
  printf '#!/bin/bash\\nexit 0\\n' > "$3/bin/python"
  printf '#!/bin/bash\\necho ran "$@"\\n' > "$3/bin/cm-mqtt-bridge"
  chmod +x "$3/bin/python" "$3/bin/cm-mqtt-bridge"; exit 0"""


def first_run(tmp_path: Path, venv: str) -> subprocess.CompletedProcess[str]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("cm-mqtt-bridge", "make-venv"):
        shutil.copy2(ROOT / "scripts" / name, repo / "scripts" / name)
    bin_dir = tmp_path / "bin"  # only these commands: no real Python can be found
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "rm", "mkdir", "chmod", "basename"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    for name, text in (("python3.13", PYENV_SHIM), ("python3", PYTHON3.format(venv=venv))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return subprocess.run(
        [str(bin_dir / "bash"), str(repo / "scripts" / "cm-mqtt-bridge"), "--version"],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.mark.parametrize("venv", ["works", "missing"])
def test_first_run_says_what_it_does_quietly(tmp_path: Path, venv: str) -> None:
    result = first_run(tmp_path, FAKE_VENV if venv == "works" else NO_VENV)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("creating .venv and installing cm-mqtt-bridge (first run")
    assert "command not found" not in result.stderr
    if venv == "works":
        assert (result.returncode, result.stdout, lines) == (0, "ran --version\n", lines[:1])
    else:
        assert result.returncode == 1
        assert lines[1:] == [
            "error: python3 cannot create a virtualenv: on Debian/Ubuntu, "
            "sudo apt-get install python3-venv"
        ]
        assert not (tmp_path / "repo" / ".venv").exists()
