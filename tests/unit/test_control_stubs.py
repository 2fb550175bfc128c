"""The committed gRPC stubs of the control API are what the proto generates (no drift)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet.control import bearer

REPO = Path(__file__).resolve().parents[2]
STUBS = ("control_pb2.py", "control_pb2.pyi", "control_pb2_grpc.py")

pytestmark = pytest.mark.unit


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts/gen-control.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in STUBS:
        fresh = (tmp_path / "modelfleet/control" / name).read_text()
        committed = (REPO / "modelfleet/control" / name).read_text()
        assert fresh == committed, f"{name} drifted: run bash scripts/gen-control.sh"


def test_stubs_describe_the_four_calls() -> None:
    from modelfleet.control import control_pb2

    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Drain", "Undrain", "ListEndpoints", "Stats"}
    assert methods["Drain"].server_streaming
    assert not methods["Stats"].server_streaming


def test_bearer_metadata_and_empty_token() -> None:
    assert bearer("s3cret") == (("authorization", "Bearer s3cret"),)
    with pytest.raises(ValueError, match="token"):
        bearer("")
