"""The README's "Run the scheduler against engine simulators" section, run as written.

The section's second command (the first is ``bash scripts/setup.sh``, which made this venv)
starts the scheduler over ``examples/06-local-fleet`` with its engines; then its curl commands
and its SDK snippet run unchanged against it, from the repository root.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import stop_scheduler, wait_listening

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TITLE = "## Run the scheduler against engine simulators"


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(TITLE)
    end = text.find("\n## ", start + len(TITLE))
    return text[start : end if end > 0 else None]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(), re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block, with backslash continuations joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    setup, start = commands(blocks("bash")[0])
    assert setup == "bash scripts/setup.sh"
    argv = shlex.split(start)
    assert argv[0] == ".venv/bin/modelfleet"
    busy = [p for p in (8000, 8101, 8102, 8103, 8104) if not port_free(p)]
    assert not busy, f"the README's ports {busy} are taken on this machine"
    log = tmp_path_factory.mktemp("readme") / "scheduler.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "modelfleet"), *argv[1:]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert wait_listening(proc) == "http://127.0.0.1:8000"
        yield proc
    finally:
        rc, _ = stop_scheduler(proc, settle_s=0.0)
        assert rc == 0, f"scheduler exited with {rc}: {log.read_text()[-2000:]}"
        assert all(port_free(p) for p in (8101, 8102, 8103, 8104)), "engines outlived it"


def test_curl_commands_work_as_written(scheduler: subprocess.Popen[str]) -> None:
    models, chat = commands(blocks("bash")[1])
    out = subprocess.run(models, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert {m["id"] for m in json.loads(out.stdout)["data"]} == {"chat", "code"}
    out = subprocess.run(chat, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text and chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert {c["model"] for c in chunks} <= {"llama-3.1-8b", "llama-3.2-3b"}


def test_sdk_snippet_works_as_written(scheduler: subprocess.Popen[str]) -> None:
    (snippet,) = blocks("python")
    out = subprocess.run(
        [sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the SDK streamed no text"
