"""The package's layers, as the folder names say: no module imports a layer above its own, and
module imports form no cycle. Checked on the source (every import, including ones inside
functions), so a shortcut across layers fails here before review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "cm_mqtt_bridge"
# Lowest first. A module may import its own layer and those before it; the top-level modules
# (`__init__` for the version, `exits` for exit codes) are below everything. `notify` (with the
# `store` its dispatcher drains) sits below `config`: each channel declares its own config
# model, and the config reads them from the channel registry, as it reads the rules from `core`.
LAYERS = ["core", "store", "notify", "config", "ha", "crossmodel", "service", "cli"]


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PKG.parent).with_suffix("").parts): path
        for path in PKG.rglob("*.py")
    }


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("cm_mqtt_bridge"):
                continue
            for alias in node.names:
                # `from ..ha import dashboard` imports a module; `from .x import Name` a name.
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cm_mqtt_bridge")}
    found.discard(name)
    return found


def _layer(module: str) -> int:
    if module == "cm_mqtt_bridge.__main__":
        return len(LAYERS)  # `python -m cm_mqtt_bridge`: the entry point, above the CLI
    parts = module.split(".")
    if len(parts) < 3 or parts[1] not in LAYERS:
        return -1  # the top-level modules
    return LAYERS.index(parts[1])


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_package_is_in_layers_with_few_top_level_modules() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 6, top
    assert sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists()) == sorted(LAYERS)
    for layer in LAYERS:
        assert (PKG / layer / "__init__.py").read_text().startswith('"""'), layer


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} imports {upward}"


def test_module_imports_have_no_cycle() -> None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(" -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for target in sorted(GRAPH.get(node, ())):
            visit(target, [*path, node])
        done.add(node)

    for module in sorted(GRAPH):
        visit(module, [])
