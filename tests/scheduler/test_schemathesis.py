"""Schemathesis against the scheduler's own OpenAPI description (``GET /openapi.json``).

A real scheduler (HTTP on loopback, uvicorn in its process: ``--no-ray``; the Ray Serve path is
the same ASGI app, covered by ``test_live.py``) in front of launched engine simulators of
``examples/06-local-fleet`` is driven by schemathesis's CLI: every operation, examples
generated from the schema and mutated against it (coverage and fuzzing phases), with the
server-side checks: no 5xx, documented status codes, content types, headers and response
schemas, the methods each path refuses. Afterwards the scheduler still answers the OpenAI SDK,
holds no request in flight and stops cleanly.

Not run: ``positive_data_acceptance`` / ``negative_data_rejection``. They hold the description
to every rule the *engine* enforces (vLLM's: a token id below the model's vocabulary size, a
``stop`` list of at most 4 strings, text-only content parts...). The scheduler forwards those
to the engine and passes its 400 through; it cannot state a per-model vocabulary in one
document, so those two checks measure the engine's rules, not this API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from .conftest import free_port, start_scheduler, stop_scheduler, wait_listening

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "examples" / "06-local-fleet"
CHECKS_NOT_RUN = "negative_data_rejection,positive_data_acceptance"


@pytest.mark.integration
@pytest.mark.timeout(900)  # a loaded machine: the run is ~1 min idle
def test_schemathesis_finds_no_server_error_and_the_scheduler_keeps_serving(
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet"
    shutil.copytree(FLEET, fleet)
    endpoints = fleet / "endpoints.yaml"  # the example's fixed ports, made free ones
    endpoints.write_text(
        re.sub(r"127\.0\.0\.1:\d+", lambda _: f"127.0.0.1:{free_port()}", endpoints.read_text())
    )
    port = free_port()
    proc = start_scheduler(
        fleet, port, "--no-ray", "--launch-engines", "--engine-time-scale", "0.001"
    )
    try:
        url = wait_listening(proc)
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
             "--checks", "all", "--exclude-checks", CHECKS_NOT_RUN,
             "--max-examples", "40", "--seed", "1", "--workers", "1",
             "--request-timeout", "120", "--max-response-time", "120", "--no-color",
             "--wait-for-schema", "30"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )  # fmt: skip
        summary = run.stdout[-6000:]
        assert run.returncode == 0, summary
        assert " passed" in summary and "failures" not in summary, summary

        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Still there?"}], max_tokens=4
        )
        assert answer.usage is not None and answer.usage.completion_tokens == 4

        deadline = time.monotonic() + 30
        while (inflight := _inflight(url)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert inflight == 0, "requests left in flight after the run"
    finally:
        rc, left = stop_scheduler(proc)
    assert rc == 0, (tmp_path / f"scheduler-{port}.log").read_text()[-3000:]
    assert not left, left


def _inflight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelfleet_inflight_requests{")
    )
