"""kwok pods made real: an engine simulator on each engine pod's loopback IP.

The operator renders a pool; kwok runs its pods with IPs from the test cluster's loopback
pod range; :class:`~modelfleet.testing.kwok_engines.KwokEngines` serves an engine simulator at
each pod's ``<podIP>:<http port>``, configured from the pod (its ``vllm serve`` arguments and
annotations). The real OpenAI SDK then streams a chat completion from a pod's address, and
scaling the pool or deleting it stops the engines of the pods that went. This is the piece a
scheduler's Kubernetes source needs for the end-to-end test: discover pods by label, send to
``status.podIP``.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from openai import OpenAI
from operator_harness import InProcessOperator, condition_is, kube, wait_until

from modelfleet.testing.cluster import ClusterClient
from modelfleet.testing.kwok_engines import KwokEngines

pytestmark = pytest.mark.cluster

PROFILE = {
    "apiVersion": "modelfleet.io/v1alpha1",
    "kind": "AcceleratorProfile",
    "metadata": {"name": "a100-80gb"},
    "spec": {
        "gpuProduct": "NVIDIA-A100-SXM4-80GB",
        "memoryGiB": 80,
        "costPerHour": 2.2,
        "simulatorProfile": "a100-80gb",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def pool(namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "sim", "namespace": namespace},
        "spec": {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "servedModelName": "llama-3.1-8b",
            "engine": {"maxModelLen": 4096, "kvEvents": True},
            "variants": [
                {
                    "name": "a100",
                    "acceleratorProfile": "a100-80gb",
                    "minReplicas": 0,
                    "maxReplicas": 3,
                }
            ],
            "replicas": replicas,
        },
    }


@pytest.fixture
def engines(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
) -> Iterator[KwokEngines]:
    op = InProcessOperator(cluster, namespace).start()
    fleet = KwokEngines(
        lambda ns, sel: kube(cluster).list_objects("Pod", ns, sel), namespace, time_scale=0.02
    )
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()
        op.stop()


def test_pods_are_served_on_their_loopback_ips(
    cluster: ClusterClient, namespace: str, engines: KwokEngines
) -> None:
    text = yaml.safe_dump_all([PROFILE, pool(namespace, 2)])
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=text)
    wait_until(
        lambda: condition_is(cluster, "ModelPool", namespace, "sim", "Ready", "True"), "Ready"
    )
    served = engines.wait_for(2, pool="sim")
    pods = {
        p["metadata"]["name"]: p
        for p in kube(cluster).list_objects("Pod", namespace, "modelfleet.io/pool=sim")
    }
    assert set(served) == {f"{namespace}/{name}" for name in pods}
    for key, url in served.items():
        ip = pods[key.split("/", 1)[1]]["status"]["podIP"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.1.0.0/16")
        assert url == f"http://{ip}:8000"
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["llama-3.1-8b"]
        # configured from the pod: block size, context and KV events on the pod's own IP
        server = engines.server(key)
        assert server is not None and server.core.config.max_model_len == 4096
        assert server.publisher is not None and ip in str(server.publisher.last_endpoint)

    url = next(iter(served.values()))
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="llama-3.1-8b",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) >= 2  # tokens arrived one by one
    assert "".join(pieces)

    # Scaling down removes a pod: its engine stops once idle; the survivor keeps serving.
    cluster.kubectl("scale", "mp", "sim", "-n", namespace, "--replicas=1")
    left = wait_until(lambda: len(e := engines.endpoints("sim")) == 1 and e, "one engine left")
    gone = (set(served) - set(left)).pop()
    wait_until(lambda: engines.server(gone) is None, "the removed pod's engine to stop")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{served[gone]}/health", timeout=2)
    with urllib.request.urlopen(f"{next(iter(left.values()))}/health", timeout=5) as r:
        assert r.status == 200

    cluster.kubectl("delete", "mp", "sim", "-n", namespace)
    wait_until(
        lambda: not engines.endpoints() and engines.server(next(iter(left))) is None,
        "no engine left",
    )
    assert not engines.errors
