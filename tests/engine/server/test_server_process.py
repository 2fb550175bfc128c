"""``python -m modelfleet.engine`` as a real process: serves on loopback, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.integration

BASE = ["--accelerator", "h100-80gb", "--model", "llama-3-8b"]


def test_python_m_engine_serves_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "modelfleet.engine", *BASE, "--port", "0", "--time-scale", "0.1",
           "--kv-events-port", "0", "--served-model-name", "fleet-8b"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        url = m.group(1)
        assert "kv events tcp://" in line
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        req = urllib.request.Request(
            url + "/v1/completions",
            data=json.dumps({"model": "fleet-8b", "prompt": "hi", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert body["model"] == "fleet-8b" and body["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
