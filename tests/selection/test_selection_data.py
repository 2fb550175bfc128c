"""RouterBench data cleaning (945 test rows) and CSV parsing errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selection_train import (
    ROUTERBENCH_MODELS,
    decode_prompt,
    load_routerbench,
    parse_routerbench_csv,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "routerbench"


@pytest.mark.parametrize(
    ("split", "rows", "dropped", "per_task"),
    [
        ("test", 945, 8, {"arc-challenge": 437, "winogrande": 380, "mbpp": 128}),
        ("train", 2205, 20, {"arc-challenge": 1019, "winogrande": 887, "mbpp": 299}),
    ],
    ids=["test", "train"],
)
def test_cleaning_counts(split: str, rows: int, dropped: int, per_task: dict[str, int]) -> None:
    s = load_routerbench(DATA, split)
    assert (len(s), s.dropped) == (rows, dropped)
    assert {t: s.tasks.count(t) for t in per_task} == per_task
    assert s.quality.shape == s.cost.shape == (rows, len(ROUTERBENCH_MODELS))
    assert np.isin(s.quality, [0.0, 1.0]).all() and (s.cost > 0).all()
    assert len(set(s.sample_ids)) == rows


def test_test_split_matches_the_reference_figures() -> None:
    s = load_routerbench(DATA, "test")
    g = ROUTERBENCH_MODELS.index("gpt-4-1106-preview")
    assert s.quality[:, g].mean() == pytest.approx(0.879, abs=5e-4)
    assert not any(p.startswith("['") for p in s.prompts)  # list literals decoded


HEADER = ["", "sample_id", "prompt", "eval_name"]
HEADER += list(ROUTERBENCH_MODELS) + [f"{m}|total_cost" for m in ROUTERBENCH_MODELS]


def csv_text(*rows: list[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(HEADER)
    w.writerows(rows)
    return buf.getvalue()


def row(sample: str, quality: str = "1.0", cost: str = "0.001") -> list[str]:
    m = len(ROUTERBENCH_MODELS)
    return ["0", sample, "['hi']", "arc", *([quality] * m), *([cost] * m)]


@pytest.mark.parametrize(
    ("rows", "kept", "dropped"),
    [
        ([row("a")], 1, 0),
        ([row("a"), row("b", quality="")], 1, 1),
        ([row("a", cost=" "), row("b")], 1, 1),
        ([], 0, 0),
    ],
    ids=["clean", "empty-quality", "blank-cost", "empty-file"],
)
def test_rows_with_an_empty_cell_are_dropped(
    rows: list[list[str]], kept: int, dropped: int
) -> None:
    out, d = parse_routerbench_csv(csv_text(*rows))
    assert (len(out), d) == (kept, dropped)


def test_one_empty_model_cell_drops_the_row() -> None:
    r = row("a")
    r[4 + 3] = ""  # claude-v2's quality only
    assert parse_routerbench_csv(csv_text(r, row("b"))) == (
        parse_routerbench_csv(csv_text(row("b")))[0],
        1,
    )


def test_missing_column_is_named() -> None:
    text = csv_text(row("a")).replace("claude-v1|total_cost", "claude-v1|cost")
    with pytest.raises(ValueError, match=r"claude-v1\|total_cost"):
        parse_routerbench_csv(text)


@pytest.mark.parametrize(
    ("cell", "want"),
    [
        ("['a\\nb']", "a\nb"),
        ("plain text", "plain text"),
        ("[not python", "[not python"),
        ("[1, 2]", "[1, 2]"),
    ],
    ids=["list-literal", "plain", "broken-literal", "non-string-list"],
)
def test_decode_prompt(cell: str, want: str) -> None:
    assert decode_prompt(cell) == want


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="split"):
        load_routerbench(DATA, "validation")
