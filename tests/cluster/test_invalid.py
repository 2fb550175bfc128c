"""Every manifest in tests/data/invalid/ is refused by the real API server, which names the
same field as ``modelfleet validate``.

For each file, each object is POSTed (``try_create`` fixture) as admin with
``fieldValidation=Strict`` (what kubectl does by default) into the test's namespace. The API
server must refuse at least one object (HTTP 400/422) and name the field in its message. The
fields it blames (``details.causes[].field``, or the quoted path of an unknown field) are
compared with the fields
``modelfleet validate FILE`` prints (``file: Kind/name: field.path: message``), and with the
file's ``# expect-field:`` comment when it has one.

Comparison rule (:func:`agree`): paths are normalised (``normalise_field``: dotted, from the
object root, list indexes removed, so ``spec.variants[0].minReplicas`` equals
``spec.variants.minReplicas``). Every field ``modelfleet validate`` names must be named by the
server, and every field the server names must be one of those or an *ancestor* of one. The
ancestor allowance covers one known asymmetry: the API server also evaluates a CEL rule of the
enclosing object (``spec.defaultTargets``: "at least one weight must be > 0") on an object whose
field already failed (``spec.defaultTargets[0].weight < 0``), while pydantic skips an object's
validators once one of its fields failed. Any other difference (a different field, a sibling,
a descendant, a field one side misses) means the offline models and the CRD schemas drifted
apart: a bug in one of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelfleet.testing.cluster_manifests import load_manifests, normalise_field, refused_fields

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
INVALID_FILES = sorted((REPO / "tests" / "data" / "invalid").glob("*.yaml"))
#: ``file: Kind/name: field.path: message``, the line format of ``modelfleet validate``.
_VALIDATE_LINE = re.compile(r"^(?P<file>.+?\.yaml): [A-Za-z]+/[^:]+: (?P<field>\S+): .+$")
_EXPECT = re.compile(r"^#\s*expect-field:\s*(\S+)", re.MULTILINE)


def modelfleet_cli() -> list[str]:
    """The ``modelfleet`` console script next to this interpreter, else the one on PATH."""
    local = Path(sys.executable).parent / "modelfleet"
    found = str(local) if local.exists() else shutil.which("modelfleet")
    if not found:
        pytest.fail("the `modelfleet` command is not installed (pip install -e .)", pytrace=False)
    return [found]


@pytest.fixture(scope="module")
def validate_output() -> dict[str, list[str]]:
    """``modelfleet validate`` run once on every invalid file: file path → fields it names.

    One process for all files (the CLI takes several), since each start imports pydantic.
    """
    proc = subprocess.run(
        [*modelfleet_cli(), "validate", *map(str, INVALID_FILES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1, f"modelfleet validate exited {proc.returncode}:\n{proc.stderr}"
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if m := _VALIDATE_LINE.match(line):
            out.setdefault(m.group("file"), []).append(m.group("field"))
    return out


def agree(server_fields: list[str], offline_fields: list[str]) -> bool:
    """The comparison rule of the module docstring."""
    server = {normalise_field(f) for f in server_fields}
    offline = {normalise_field(f) for f in offline_fields}
    return offline <= server and all(
        s in offline or any(o.startswith(s + ".") for o in offline) for s in server
    )


@pytest.mark.parametrize(
    ("server", "offline", "expected"),
    [
        (["spec.variants[0].minReplicas"], ["spec.variants[0].minReplicas"], True),
        (["spec.variants[1].minReplicas"], ["spec.variants[0].minReplicas"], True),
        (
            ["spec.defaultTargets[0].weight", "spec.defaultTargets"],
            ["spec.defaultTargets[0].weight"],
            True,
        ),
        (["spec.variants"], ["spec.variants[0].minReplicas"], False),
        (["spec.variants[0].maxReplicas"], ["spec.variants[0].minReplicas"], False),
        (["spec.variants[0].minReplicas"], ["spec.variants"], False),
        (["spec.model", "spec.engine.port"], ["spec.model"], False),
    ],
    ids=[
        "same",
        "index-differs",
        "ancestor-rule-too",
        "only-ancestor",
        "sibling",
        "descendant",
        "extra",
    ],
)
def test_agree(server: list[str], offline: list[str], expected: bool) -> None:
    assert agree(server, offline) is expected


def test_invalid_directory_is_not_empty() -> None:
    assert INVALID_FILES, "tests/data/invalid/*.yaml: no manifests"


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_manifest_is_refused_naming_the_same_field(
    try_create: Callable[[dict[str, Any], str], tuple[int, dict[str, Any], str]],
    installed_crds: list[dict[str, Any]],
    validate_output: dict[str, list[str]],
    namespace: str,
    path: Path,
) -> None:
    docs = load_manifests(path)
    assert docs, f"{path}: no Kubernetes objects"
    refusals = [r for r in (try_create(d, namespace) for d in docs) if r[0] not in (200, 201)]
    assert refusals, f"{path}: the API server accepted every object"

    server_fields: list[str] = []
    for status, body, text in refusals:
        assert status in (400, 422), f"{path}: unexpected HTTP {status}: {text[:500]}"
        fields = refused_fields(body)
        assert fields, f"{path}: the refusal names no field: {body.get('message', text)}"
        for f in fields:
            assert f in body["message"], f"{path}: message does not name {f}: {body['message']}"
        server_fields += fields

    cli_fields = validate_output.get(str(path), [])
    assert cli_fields, f"{path}: modelfleet validate names no field"
    assert agree(server_fields, cli_fields), (
        f"{path}: API server blames {server_fields}, modelfleet validate blames {cli_fields}"
    )
    if expected := _EXPECT.findall(path.read_text()):
        assert agree(server_fields, expected), f"{path}: expect-field {expected}"
