"""The static fleet file: the example loads; each mistake is one line naming the field."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet.scheduler.config import ConfigError, StaticFileSource, load_static_fleet
from modelfleet.scheduler.launch import SIM_MODELS, engine_command, sim_model

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "06-local-fleet"


def test_the_example_fleet_loads() -> None:
    snap = load_static_fleet(str(EXAMPLE))
    assert sorted(snap.public_models()) == ["chat", "code"]
    assert sorted(k[1] for k in snap.pools) == ["chat-large", "chat-small", "coder"]
    assert [e.id for e in snap.endpoints] == [f"127.0.0.1:{p}" for p in (8101, 8102, 8103, 8104)]


def _broken(tmp_path: Path, old: str, new: str, file: str = "fleet.yaml") -> str:
    for f in EXAMPLE.glob("*.yaml"):
        text = f.read_text()
        if f.name == file:
            assert old in text, old
            text = text.replace(old, new, 1)
        (tmp_path / f.name).write_text(text)
    return str(tmp_path)


CASES = [
    (
        "unknown-field",
        "fleet.yaml",
        '  modelNames: ["chat"]',
        '  modelNames: ["chat"]\n  colour: red',
        "spec.colour: unknown field",
    ),
    ("bad-weight", "fleet.yaml", "weight: 3", "weight: -3", "spec.defaultTargets[0].weight"),
    (
        "bad-profile",
        "fleet.yaml",
        "profile: modelfleet\n  sloClasses",
        "profile: fastest\n  sloClasses",
        "spec.placement.profile",
    ),
    (
        "unknown-variant",
        "endpoints.yaml",
        "{pool: chat-small, variant: l40s",
        "{pool: chat-small, variant: h100",
        "spec.endpoints[2].variant",
    ),
    ("unknown-pool", "endpoints.yaml", "{pool: coder,", "{pool: coders,", "spec.endpoints[3].pool"),
    (
        "bad-url",
        "endpoints.yaml",
        '"http://127.0.0.1:8104"',
        '"127.0.0.1:8104"',
        "spec.endpoints[3].url",
    ),
    (
        "dup-url",
        "endpoints.yaml",
        '"http://127.0.0.1:8102"',
        '"http://127.0.0.1:8101"',
        "endpoint ids",
    ),
    ("dup-model", "fleet.yaml", 'modelNames: ["code"]', 'modelNames: ["chat"]', "spec.modelNames"),
    ("bad-yaml", "fleet.yaml", "kind: RoutingPolicy", "kind: [RoutingPolicy", "not valid YAML"),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_mistake_names_its_field(
    tmp_path: Path, file: str, old: str, new: str, field: str
) -> None:
    path = _broken(tmp_path, old, new, file)
    with pytest.raises(ConfigError) as err:
        load_static_fleet(path)
    assert any(field in line for line in err.value.problems), err.value.problems


def test_scheduler_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    path = _broken(tmp_path, "weight: 3", "weight: -3")
    r = subprocess.run(
        [sys.executable, "-m", "modelfleet.cli", "scheduler", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].endswith(
        "RoutingPolicy/chat: spec.defaultTargets[0].weight: Input should be greater than or "
        "equal to 0"
    ), lines
    assert lines[-1] == f"modelfleet scheduler: {path}: not started"
    assert "ray" not in r.stderr.lower()


def test_watch_yields_valid_edits_and_ignores_broken_ones(tmp_path: Path) -> None:
    path = _broken(tmp_path, "x", "x")

    async def run() -> list[str]:
        src = StaticFileSource(path, poll_s=0.01)
        stream = src.snapshots()
        seen = [(await anext(stream)).version]
        fleet = tmp_path / "fleet.yaml"
        text = fleet.read_text()
        waiting = asyncio.ensure_future(anext(stream))
        fleet.write_text(text.replace("weight: 3", "weight: -3"))  # broken: ignored
        await asyncio.sleep(0.2)
        assert src.rejected == 1 and not waiting.done()
        assert any("weight" in line for line in src.last_problems)
        fleet.write_text(text.replace("weight: 3", "weight: 5"))
        seen.append((await asyncio.wait_for(waiting, 5)).version)
        await stream.aclose()
        return seen

    first, second = asyncio.run(run())
    assert first != second


def test_sim_models_match_the_engine_table() -> None:
    from modelfleet.engine.profiles import MODELS

    assert set(SIM_MODELS) == set(MODELS)
    assert sim_model("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert sim_model("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-7b"
    assert sim_model("someone/else") is None


def test_launch_command_follows_the_pool() -> None:
    snap = load_static_fleet(str(EXAMPLE))
    e = snap.endpoints[2]
    cmd, _ = engine_command(snap, e, 0.1)
    args = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert cmd[1:3] == ["-m", "modelfleet.engine"]
    assert args["--accelerator"] == "l40s" and args["--model"] == "llama-3.2-3b"
    assert args["--served-model-name"] == "llama-3.2-3b" and args["--port"] == "8103"
