#!/usr/bin/env python3
"""Assemble the Home Assistant add-on repository that users add, in a directory of its own.

The release workflow runs this and pushes the result as the branch `addon-repository`
(users add https://github.com/crossmodel/cm-mqtt-bridge#addon-repository). The tree holds only
what the Supervisor reads: repository.yaml and, per add-on, config.yaml, the store texts, the
icon, the logo and translations. No Dockerfile (config.yaml's `image:` names the prebuilt
image) and, unlike the main branch, no config.example.yaml that the Supervisor's scan for
`config.*` files would take for a broken add-on config.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ADDON_ROOT = Path(__file__).resolve().parent
ADDON_FILES = ("config.yaml", "README.md", "DOCS.md", "CHANGELOG.md", "icon.png", "logo.png")
ADDON_DIRS = ("translations",)


def addon_dirs(root: Path = ADDON_ROOT) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/config.yaml"))


def build(output: Path, root: Path = ADDON_ROOT) -> list[Path]:
    """Write the repository tree into `output` (emptied first); return the files written."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    shutil.copy2(root / "repository.yaml", output / "repository.yaml")
    for addon in addon_dirs(root):
        target = output / addon.name
        target.mkdir()
        for name in ADDON_FILES:
            shutil.copy2(addon / name, target / name)
        for name in ADDON_DIRS:
            shutil.copytree(addon / name, target / name)
    return sorted(p for p in output.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="directory to write (its content is replaced)")
    args = parser.parse_args(argv)
    for path in build(args.output):
        print(path.relative_to(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
