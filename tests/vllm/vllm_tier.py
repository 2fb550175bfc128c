"""Helpers of the `vllm` tier: the same calls against the simulator and real vLLM.

HTTP goes through the standard library only (``urllib``), so that what is tested is the
servers, not a client library's retries or defaults.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "BLOCK", "MAX_LEN", "KVSubscriber", "Sample", "Target", "post", "samples", "sse",
    "sse_chunks",
]  # fmt: skip

BLOCK = 32  # vLLM's CPU backend needs a multiple of 32
MAX_LEN = 1024

Sample = tuple[str, tuple[tuple[str, str], ...]]
"""A Prometheus sample's name and sorted labels."""


def post(url: str, path: str, body: Any, ctype: str = "application/json") -> tuple[int, Any]:
    """POST a JSON body (or raw bytes); the status and the decoded JSON (or the raw text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def sse(url: str, path: str, body: dict[str, Any]) -> list[str]:
    """A streamed response's event payloads (``data: `` stripped), ``[DONE]`` included."""
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def sse_chunks(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream that ended with ``[DONE]``."""
    events = sse(url, path, body)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def samples(url: str, prefix: str = "vllm:") -> dict[Sample, float]:
    """Every sample of ``/metrics`` whose family starts with ``prefix``, keyed by name+labels
    (``*_created`` timestamps left out: they are not counts)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(prefix):
            continue
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class KVSubscriber:
    """A bound SUB socket receiving one server's KV-event messages ``[topic, seq, payload]``."""

    TOPIC = "kv"

    def __init__(self) -> None:
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def config(self) -> str:
        """The ``--kv-events-config`` JSON that makes a server publish to this socket."""
        return json.dumps(
            {"enable_kv_cache_events": True, "publisher": "zmq",
             "endpoint": self.endpoint, "topic": self.TOPIC}
        )  # fmt: skip

    def drain(self) -> None:
        """Drop what earlier requests published (their last batch may still be in flight)."""
        while self.sock.poll(200):
            self.sock.recv_multipart()

    def receive(
        self, until: Callable[[list[list[bytes]]], bool], timeout: float = 10.0
    ) -> list[list[bytes]]:
        """Messages until ``until(messages)`` holds (or ``timeout`` seconds pass)."""
        got: list[list[bytes]] = []
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            if self.sock.poll(100):
                got.append(self.sock.recv_multipart())
        return got

    def close(self) -> None:
        self.sock.close(0)
        self._ctx.term()


@dataclass(frozen=True)
class Target:
    """An engine under test: its base URL and the subscriber of its KV events."""

    name: str
    url: str
    kv: KVSubscriber
