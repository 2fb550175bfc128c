"""`modelfleet validate`: examples pass, every invalid manifest fails naming its field."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from modelfleet.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())


def expected_field(path: Path) -> str:
    m = re.search(r"^# expect-field: (\S+)$", path.read_text(), re.M)
    assert m, f"{path} lacks an '# expect-field:' line"
    return m.group(1)


def test_there_are_at_least_twenty_invalid_manifests() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_refused_naming_the_field(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "no problem printed"
    file_, kind_name, field, message = out[0].split(": ", 3)
    assert file_ == str(path)
    assert "/" in kind_name
    assert field == expected_field(path)
    assert message


def test_validate_all_examples_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted((ROOT / "examples").rglob("*.yaml"))]
    assert main(["validate", "--check-refs", *files]) == 0
    assert "ok: 23 object(s) in 10 file(s)" in capsys.readouterr().out


def test_check_refs_reports_missing_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = (ROOT / "examples" / "05-routing-policy" / "policy.yaml").read_text()
    (tmp_path / "p.yaml").write_text(policy)
    assert main(["validate", str(tmp_path / "p.yaml")]) == 0
    assert main(["validate", "--check-refs", str(tmp_path / "p.yaml")]) == 1
    out = capsys.readouterr().out
    assert "no ModelPool named 'coder' in namespace default" in out


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("- just\n- a list\n", "<root>"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "apiVersion"),
        ("apiVersion: modelfleet.io/v1alpha1\nkind: Pool\nmetadata: {name: x}\n", "kind"),
        (
            "apiVersion: modelfleet.io/v1alpha1\nkind: ModelPool\nmetadata: {name: X_Y}\n"
            "spec: {}\n",
            "metadata.name",
        ),
    ],
    ids=["not-a-mapping", "foreign-api", "unknown-kind", "bad-name"],
)
def test_malformed_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(text)
    assert main(["validate", str(f)]) == 1
    assert f": {field}: " in capsys.readouterr().out


def test_not_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("a: [unclosed\n")
    assert main(["validate", str(f)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2


def test_multi_document_file_labels_each_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (ROOT / "examples" / "04-coder-pool" / "pool.yaml").read_text()
    bad = good.replace("minReplicas: 1", "minReplicas: 9")
    f = tmp_path / "two.yaml"
    f.write_text(good + "\n---\n" + bad)
    assert main(["validate", str(f)]) == 1
    out = capsys.readouterr().out
    assert f"{f}#1: ModelPool/coder: spec.variants[0].minReplicas:" in out


def readme_commands(folder: Path) -> list[tuple[list[str], list[str]]]:
    """(argv, expected output lines) for each `$ modelfleet ...` line of a README."""
    text = (folder / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    out: list[tuple[list[str], list[str]]] = []
    for block in blocks:
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ modelfleet "):
                expected = []
                for follow in lines[i + 1 :]:
                    if follow.startswith("$ "):
                        break
                    expected.append(follow)
                out.append((shlex.split(line[2:])[1:], expected))
    return out


@pytest.mark.parametrize("folder", EXAMPLES, ids=lambda p: p.name)
def test_example_readme_commands_give_the_documented_output(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    commands = readme_commands(folder)
    assert commands, f"{folder}/README.md documents no modelfleet command"
    for argv, expected in commands:
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.splitlines() == expected, argv


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "modelfleet.io/v1alpha1" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["engine", "dev-cluster"])
def test_component_subcommands_are_wired(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"modelfleet {command}" in capsys.readouterr().out
