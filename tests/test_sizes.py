"""Size limits on the source: no class over 250 lines, no function over 40 statements. Checked
with ast over src/, so a part that grows past them is split before review, not after."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "cm_mqtt_bridge"
MAX_CLASS_LINES = 250
MAX_STATEMENTS = 40

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _statements(fn: Function) -> int:
    """Statements in the body, nested ones included, but not those of nested functions or
    classes (they are counted on their own)."""
    count = 0
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.stmt):
            count += 1
        if isinstance(node, Function | ast.ClassDef):
            continue
        todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))
    return count


def _too_big() -> list[str]:
    found: list[str] = []
    for path in sorted(PKG.rglob("*.py")):
        where = path.relative_to(PKG)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    found.append(f"{where}: class {node.name} has {lines} lines")
            elif isinstance(node, Function):
                n = _statements(node)
                if n > MAX_STATEMENTS:
                    found.append(f"{where}: {node.name} has {n} statements")
    return found


def test_no_class_over_250_lines_no_function_over_40_statements() -> None:
    assert _too_big() == []


def test_the_check_sees_a_big_function_and_a_big_class() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(41))
    tree = ast.parse(f"def f():\n{body}\n")
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert _statements(fn) == 41
    nested = ast.parse("def f():\n    if x:\n        for y in z:\n            a = 1\n")
    outer = nested.body[0]
    assert isinstance(outer, ast.FunctionDef)
    assert _statements(outer) == 3
