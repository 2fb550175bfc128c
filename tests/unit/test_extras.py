"""Dependencies by role: what each extra of pyproject.toml pulls in, and the CLI without one.

The dependency closure of an extra is computed from the declared requirements
(``pyproject.toml``) and, transitively, from the metadata of the installed distributions (the
dev environment installs every extra, so every node is present), evaluating each requirement's
environment markers and extras the way pip does. ``scripts/check_extras.py`` asks pip itself
(``pip install --dry-run --report``) for the same sets, from the package index.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
#: What the simulator and the engine need and the operator's image must not carry.
ENGINE_ONLY = {"pyzmq", "msgpack", "ray"}


def _declared(extra: str | None) -> list[Requirement]:
    """The project's requirements for ``extra`` (None: the base), self-references expanded."""
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    out: list[Requirement] = []
    for text in raw:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
            for inner in sorted(req.extras):
                out += _declared(inner)
        else:
            out.append(req)
    return out


def closure(extra: str | None) -> set[str]:
    """Canonical names of every distribution installed by ``pip install .[extra]``."""
    todo = list(_declared(None)) + ([] if extra is None else _declared(extra))
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} (required for {extra or 'the base'}) is not installed")
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = [{"extra": e} for e in ("", *req.extras)]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append(sub)
    return names


def test_the_walk_follows_extras_and_markers() -> None:
    # ray[serve] must bring serve's own dependencies (an extra of a dependency), and the
    # engine extra must bring what the operator must not.
    assert {"ray", "fastapi", "uvicorn"} <= closure("scheduler")
    assert {"pyzmq", "msgpack", "aiohttp"} <= closure("engine")


def test_base_install_is_the_pure_layers_only() -> None:
    base = closure(None)
    assert {"pydantic", "pyyaml", "numpy"} <= base
    heavy = {"aiohttp", "pyzmq", "msgpack", "prometheus-client", "ray", "kopf", "kubernetes"}
    assert not base & heavy, sorted(base & heavy)


def test_operator_extra_carries_no_simulator_or_ray() -> None:
    operator = closure("operator")
    assert {"kopf", "kubernetes", "aiohttp"} <= operator  # aiohttp comes with kopf
    assert not operator & ENGINE_ONLY, sorted(operator & ENGINE_ONLY)


def test_scheduler_extra_carries_no_kubernetes_client() -> None:
    scheduler = closure("scheduler")
    assert not scheduler & {"kopf", "kubernetes"}, sorted(scheduler & {"kopf", "kubernetes"})


def test_dev_extra_is_every_role() -> None:
    dev = closure("dev")
    for extra in PROJECT["optional-dependencies"]:
        assert closure(extra) <= dev, f"dev lacks part of [{extra}]"


def _cli_without(modules: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``modelfleet ARGV`` in a fresh interpreter where ``modules`` cannot be imported."""
    code = (
        "import sys\n"
        f"for m in {modules!r}: sys.modules[m] = None\n"
        "from modelfleet.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (
            ["aiohttp", "zmq", "msgpack", "prometheus_client"],
            ["engine", "--accelerator", "h100-80gb", "--model", "llama-3-8b", "--port", "0"],
            "engine",
        ),
        (["kubernetes"], ["dev-cluster", "kubeconfig", "--state-dir", "/nonexistent"], "testing"),
    ],
    ids=["engine", "dev-cluster"],
)
def test_a_missing_extra_is_named(blocked: list[str], argv: list[str], extra: str) -> None:
    proc = _cli_without(blocked, argv)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'modelfleet[{extra}]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_other_commands_work_without_the_extras() -> None:
    proc = _cli_without(
        ["aiohttp", "zmq", "msgpack", "prometheus_client", "kubernetes", "kopf", "ray"],
        ["validate", str(PYPROJECT.parent / "examples")],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ")
