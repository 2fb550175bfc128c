"""``modelfleet scheduler``'s flags: a bad value is refused in the shared wording (cliargs)."""

from __future__ import annotations

import pytest

from modelfleet.cli import main

pytestmark = pytest.mark.unit

BASE = ["scheduler", "--config", "examples/06-local-fleet"]


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--replicas", "0", "a positive integer"),
        ("--ray-cpus", "two", "a positive integer"),
        ("--port", "70000", "a port number in 0..65535"),
        ("--scrape-period", "nan", "a positive number"),
        ("--max-body-bytes", "-1", "a positive integer"),
        ("--engine-time-scale", "0", "a positive number"),
    ],
)
def test_bad_flags_are_refused_in_the_shared_wording(
    flag: str, value: str, rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*BASE, flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: must be {rule}, got {value!r}" in capsys.readouterr().err


def test_port_zero_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "argument --port: must be a port number in 1..65535, got '0'" in err
