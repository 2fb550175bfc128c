"""The policy layer stays pure: no clock, no I/O frameworks, no higher layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modelfleet.policy

pytestmark = pytest.mark.unit

FORBIDDEN = {
    "time",
    "asyncio",
    "ray",
    "kopf",
    "kubernetes",
    "httpx",
    "aiohttp",
    "requests",
    "socket",
    "threading",
    "modelfleet.engine",
    "modelfleet.sim",
    "modelfleet.scheduler",
    "modelfleet.operator",
}
FILES = sorted(Path(modelfleet.policy.__file__).parent.glob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_forbidden_imports(path: Path) -> None:
    bad = {n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_imports() -> None:
    assert "numpy" in imported(Path(modelfleet.policy.__file__).parent / "hashing.py")
