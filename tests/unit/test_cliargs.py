"""The shared argparse types: accepted values, refused values, and the message a user sees."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest

from modelfleet.cliargs import fraction, non_negative_float, port, positive_float, positive_int

pytestmark = pytest.mark.unit

ACCEPTED = [
    (positive_int, "1", 1),
    (positive_int, "64", 64),
    (positive_float, "0.25", 0.25),
    (positive_float, "1e3", 1000.0),
    (non_negative_float, "0", 0.0),
    (non_negative_float, "2.5", 2.5),
    (fraction, "1", 1.0),
    (fraction, "0.001", 0.001),
    (port, "0", 0),
    (port, "65535", 65535),
]
REFUSED = [
    (positive_int, "0", "a positive integer"),
    (positive_int, "-3", "a positive integer"),
    (positive_int, "1.5", "a positive integer"),
    (positive_int, "many", "a positive integer"),
    (positive_float, "0", "a positive number"),
    (positive_float, "-0.1", "a positive number"),
    (positive_float, "nan", "a positive number"),
    (positive_float, "inf", "a positive number"),
    (positive_float, "fast", "a positive number"),
    (non_negative_float, "-1e-9", "a number >= 0"),
    (non_negative_float, "nan", "a number >= 0"),
    (fraction, "0", "a number in (0, 1]"),
    (fraction, "1.01", "a number in (0, 1]"),
    (fraction, "-inf", "a number in (0, 1]"),
    (port, "65536", "a port number in 0..65535"),
    (port, "-1", "a port number in 0..65535"),
    (port, "http", "a port number in 0..65535"),
]


@pytest.mark.parametrize(
    ("parse", "text", "want"), ACCEPTED, ids=[f"{p.__name__}-{t}" for p, t, _ in ACCEPTED]
)
def test_accepted(parse: Callable[[str], Any], text: str, want: Any) -> None:
    got = parse(text)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(
    ("parse", "text", "rule"), REFUSED, ids=[f"{p.__name__}-{t}" for p, t, _ in REFUSED]
)
def test_refused_with_the_rule_and_the_text(
    parse: Callable[[str], Any], text: str, rule: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    assert str(err.value) == f"must be {rule}, got {text!r}"


def test_argparse_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--ttft-slo", type=positive_float)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--ttft-slo", "-1"])
    assert exc.value.code == 2
    assert "argument --ttft-slo: must be a positive number, got '-1'" in capsys.readouterr().err
