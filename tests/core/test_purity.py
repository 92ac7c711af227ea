"""The core imports nothing but the standard library, and no I/O, clocks or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "zraft" / "core"
FORBIDDEN = {"zmq", "msgpack", "socket", "os", "time", "threading", "structlog", "asyncio"}


def _modules() -> list[Path]:
    mods = sorted(CORE.rglob("*.py"))
    assert mods, "no core modules found"
    return mods


def _violations(tree: ast.AST) -> list[str]:
    bad: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN:
                    bad.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if root in FORBIDDEN:
                bad.append(f"from {node.module} import ...")
            if root == "random":
                bad.append("from random import ... (use random.Random(seed))")
        elif isinstance(node, ast.Attribute):
            is_random = isinstance(node.value, ast.Name) and node.value.id == "random"
            if is_random and node.attr != "Random":
                bad.append(f"random.{node.attr} (global randomness)")
    return bad


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert _violations(tree) == []


def test_checker_catches_forbidden_imports() -> None:
    src = "import os\nimport random\nfrom time import monotonic\nx = random.random()\n"
    found = _violations(ast.parse(src))
    assert "import os" in found
    assert any("time" in f for f in found)
    assert any("random.random" in f for f in found)
    assert _violations(ast.parse("import random\nr = random.Random(3)\n")) == []


def test_random_only_as_seeded_instances() -> None:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            is_random_ctor = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Random"
            )
            if is_random_ctor:
                assert isinstance(node, ast.Call)
                assert node.args, f"{path.name}: random.Random() without a seed"
