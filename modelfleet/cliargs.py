"""argparse types shared by every ``modelfleet`` command: numbers with their bounds checked.

Each function turns one flag's text into a value or raises ``argparse.ArgumentTypeError`` with
a message naming the rule and the text given; argparse prefixes the flag, so a user reads e.g.
``argument --ttft-slo: must be a positive number, got '-1'``. Floats must be finite: ``nan``
and ``inf`` are refused everywhere (a NaN passes every ``<`` test and poisons what follows).

This module is the bottom layer of the package (``.importlinter``): it imports nothing from
modelfleet, so every command line, whatever its layer, can use it.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["fraction", "non_negative_float", "port", "positive_float", "positive_int"]


def _int(text: str, rule: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None


def _float(text: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer > 0 (counts: engines, requests, seeds)."""
    rule = "a positive integer"
    value = _int(text, rule)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (durations, rates, scale factors)."""
    rule = "a positive number"
    value = _float(text, rule)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (delays, offsets where zero means "none")."""
    rule = "a number >= 0"
    value = _float(text, rule)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1] (shares, utilisation limits)."""
    rule = "a number in (0, 1]"
    value = _float(text, rule)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: let the OS pick a free one)."""
    rule = "a port number in 0..65535"
    value = _int(text, rule)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value
