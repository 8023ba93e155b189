#!/usr/bin/env python3
"""Assemble the Home Assistant add-on repository that users add, or a local add-on folder.

`build_repository.py DIR`: the release workflow runs this and pushes the result as the branch
`addon-repository` (users add https://github.com/crossmodel/cm-mqtt-bridge#addon-repository).
The tree holds only what the Supervisor reads: repository.yaml and, per add-on, config.yaml,
the store texts, the icon, the logo and translations. No Dockerfile (config.yaml's `image:`
names the prebuilt image) and, unlike the main branch, no config.example.yaml that the
Supervisor's scan for `config.*` files would take for a broken add-on config.

`build_repository.py --local DIR`: DIR/cm_mqtt_bridge/, a local add-on to copy into Home
Assistant's `/addons` share, which the Supervisor builds on the device: config.yaml without
`image:`, and a Dockerfile whose every COPY source is inside the folder (the package's source
under `package/`). Works before any release exists; needs only Python's standard library.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ADDON_ROOT = Path(__file__).resolve().parent
REPO_ROOT = ADDON_ROOT.parent
# What the add-on's own files are called in the repository-root build context.
_ADDON_PREFIX = "addon/{name}/"
_COPY = re.compile(r"^(COPY|ADD)((?:\s+--\S+)*)\s+(.+?)\s+(\S+)\s*$")
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


def local_config(text: str) -> str:
    """config.yaml for a local build: the `image:` line and its comment go; the rest stays."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("image:"):
            continue
        if line.startswith("# `image`:"):
            out.append(
                "# Local add-on (build_repository.py --local): no `image:`, so the Supervisor\n"
                "# builds the Dockerfile in this folder on the device.\n"
            )
            continue
        if out and "builds the Dockerfile" in out[-1] and line.startswith("# `version`"):
            continue
        out.append(line)
    return "".join(out)


def local_dockerfile(text: str, addon: str, target: Path, repo: Path) -> str:
    """The add-on's Dockerfile (built from the repository root) rewritten for the folder as the
    build context: each COPY/ADD source is copied into `target` (the add-on's own files at its
    top, everything else under `package/`) and named there."""
    out = [
        "# The add-on as a local add-on, written by addon/build_repository.py --local: the\n",
        "# Supervisor builds it on the device, with this folder as the build context (the\n",
        "# package's source is under package/).\n",
    ]
    prefix = _ADDON_PREFIX.format(name=addon)
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)  # the header says where the published image comes from: not this one
    for line in lines:
        match = _COPY.match(line)
        if match is None:
            out.append(line)
            continue
        verb, flags, sources, dest = match.groups()
        local = []
        for source in sources.split():
            if source.startswith(prefix):
                name = source[len(prefix) :]
                _copy(repo / source, target / name)
            else:
                name = f"package/{source}"
                _copy(repo / source, target / name)
            local.append(name)
        out.append(f"{verb}{flags} {' '.join(local)} {dest}\n")
    return "".join(out)


def _copy(source: Path, target: Path) -> None:
    if not source.exists():
        raise SystemExit(f"build_repository: {source} is missing (run it from a full checkout)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def build_local(output: Path, root: Path = ADDON_ROOT, repo: Path = REPO_ROOT) -> list[Path]:
    """Write each add-on as a local add-on folder under `output`; return the files written."""
    output.mkdir(parents=True, exist_ok=True)
    for addon in addon_dirs(root):
        target = output / addon.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        for name in ADDON_FILES:
            shutil.copy2(addon / name, target / name)
        for name in ADDON_DIRS:
            shutil.copytree(addon / name, target / name)
        config = (addon / "config.yaml").read_text(encoding="utf-8")
        (target / "config.yaml").write_text(local_config(config), encoding="utf-8")
        dockerfile = (addon / "Dockerfile").read_text(encoding="utf-8")
        rewritten = local_dockerfile(dockerfile, addon.name, target, repo)
        (target / "Dockerfile").write_text(rewritten, encoding="utf-8")
    return sorted(p for p in output.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Local add-on: python3 addon/build_repository.py --local DIR, then copy "
        "DIR/cm_mqtt_bridge into Home Assistant's /addons share (Samba or SSH add-on).",
    )
    parser.add_argument("output", type=Path, help="directory to write (its content is replaced)")
    parser.add_argument(
        "--local",
        action="store_true",
        help="write OUTPUT/cm_mqtt_bridge/, a local add-on the Supervisor builds on the device",
    )
    args = parser.parse_args(argv)
    if args.local:
        files = build_local(args.output)
        for addon in addon_dirs():
            print(f"wrote {args.output / addon.name}/ ({len(files)} files): copy it into the")
            print("/addons share, then Settings -> Apps -> Install app -> \u22ee -> Check for")
            print("updates (before HA 2026.2: Settings -> Add-ons -> Add-on store); it is listed")
            print("under Local apps (Local add-ons).")
        return 0
    for path in build(args.output):
        print(path.relative_to(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
