"""The scheduler's Kubernetes fleet source on the real control plane.

:class:`~modelfleet.scheduler.kube.KubernetesSource` lists and watches the test cluster (its
kubeconfig, one namespace) exactly as ``modelfleet scheduler --kubernetes`` does; the test
changes objects with ``kubectl`` and waits for the snapshots to follow:

* ModelPools, RoutingPolicies and AcceleratorProfiles created, edited and deleted;
* engine pods (labelled as the operator labels them, run by kwok with loopback IPs) become
  endpoints while Ready, and leave when NotReady, deleted, or their pool goes;
* a RoutingPolicy the API server accepts but the scheduler cannot use is left out, named in
  ``skipped``, while the rest of the fleet stays in the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml
from operator_harness import get

from modelfleet.api.common import API_VERSION
from modelfleet.scheduler.fleet import FleetSnapshot
from modelfleet.scheduler.kube import KubernetesSource
from modelfleet.testing.cluster import ClusterClient

pytestmark = pytest.mark.cluster


class Follower:
    """The latest snapshot of a running source (a background task drives it)."""

    def __init__(self, source: KubernetesSource) -> None:
        self.source = source
        self.latest: FleetSnapshot | None = None
        self.count = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for snap in self.source.snapshots():
            self.latest = snap
            self.count += 1

    async def until(
        self, check: Callable[[FleetSnapshot], bool], what: str, timeout: float = 30.0
    ) -> FleetSnapshot:
        deadline = time.monotonic() + timeout
        while True:
            if self.task.done():
                self.task.result()  # the source failed: raise its error
                raise AssertionError("the source stopped")
            if self.latest is not None and check(self.latest):
                return self.latest
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; "
                    f"last snapshot: {self.latest}, skipped: {self.source.skipped}"
                )
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def following(cluster: ClusterClient, namespace: str) -> AsyncIterator[Follower]:
    source = KubernetesSource(kubeconfig=str(cluster.kubeconfig), namespace=namespace)
    follower = Follower(source)
    try:
        yield follower
    finally:
        follower.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower.task


async def kubectl(cluster: ClusterClient, *args: str, doc: Any = None) -> str:
    text = None if doc is None else yaml.safe_dump_all(doc if isinstance(doc, list) else [doc])
    done = await asyncio.to_thread(cluster.kubectl, *args, input=text)
    return str(done.stdout)


def engine_pod(name: str, pool: str, variant: str) -> dict[str, Any]:
    """A pod as the operator's Deployments make them (labels, the ``http`` port); kwok runs
    it on one of the simulated GPU nodes."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name,
                     "labels": {"modelfleet.io/pool": pool, "modelfleet.io/variant": variant}},
        "spec": {
            "containers": [{"name": "engine", "image": "vllm/vllm-openai:v0",
                            "ports": [{"name": "http", "containerPort": 8000}]}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"operator": "Exists"}],
        },
    }  # fmt: skip


def endpoints(snap: FleetSnapshot) -> dict[str, str]:
    return {e.id: e.url for e in snap.endpoints}


async def test_the_source_follows_objects_pods_and_policy_edits(
    cluster: ClusterClient, installed_crds: list[dict[str, Any]], namespace: str
) -> None:
    ns = namespace
    profile = f"src-{uuid.uuid4().hex[:6]}"
    objects = [
        {"apiVersion": API_VERSION, "kind": "AcceleratorProfile", "metadata": {"name": profile},
         "spec": {"gpuProduct": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80, "costPerHour": 3.9}},
        {"apiVersion": API_VERSION, "kind": "ModelPool", "metadata": {"name": "p"},
         "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "llama",
                  "variants": [{"name": "a", "acceleratorProfile": profile}]}},
        {"apiVersion": API_VERSION, "kind": "RoutingPolicy", "metadata": {"name": "rp"},
         "spec": {"modelNames": ["chat"], "defaultTargets": [{"pool": "p"}]}},
    ]  # fmt: skip
    try:
        async with following(cluster, ns) as src:
            # Created: every object shows up.
            await kubectl(cluster, "apply", "-n", ns, "-f", "-", doc=objects)
            snap = await src.until(
                lambda s: (
                    (ns, "p") in s.pools and (ns, "rp") in s.policies and profile in s.profiles
                ),
                "the pool, the policy and the profile",
            )
            assert snap.source == "kubernetes" and snap.public_models() == {"chat": (ns, "rp")}
            assert not snap.endpoints

            # Engine pods become endpoints once kwok has made them Ready (loopback pod IPs);
            # a pod of a variant the pool does not have is not one.
            pods = [engine_pod("e-0", "p", "a"), engine_pod("e-1", "p", "a"),
                    engine_pod("stray", "p", "zz")]  # fmt: skip
            await kubectl(cluster, "apply", "-n", ns, "-f", "-", doc=pods)
            snap = await src.until(
                lambda s: set(endpoints(s)) == {f"{ns}/e-0", f"{ns}/e-1"}, "two endpoints"
            )
            for e in snap.endpoints:
                ip = get(cluster, "Pod", ns, e.id.split("/")[1])["status"]["podIP"]
                assert ip.startswith("127.")
                assert (e.url, e.pool, e.variant) == (f"http://{ip}:8000", "p", "a")
            assert get(cluster, "Pod", ns, "stray")["status"].get("podIP")

            # NotReady leaves the fleet, Ready again comes back.
            for status, want in (("False", {f"{ns}/e-1"}), ("True", {f"{ns}/e-0", f"{ns}/e-1"})):
                patch = {"status": {"conditions": [{"type": "Ready", "status": status}]}}
                await kubectl(
                    cluster, "patch", "pod", "e-0", "-n", ns, "--subresource=status",
                    "--type=strategic", "-p", yaml.safe_dump(patch),
                )  # fmt: skip
                await src.until(lambda s, w=want: set(endpoints(s)) == w, f"Ready={status}")

            # Edits: the pool (a second variant) and the policy (a second public name).
            await kubectl(
                cluster, "patch", "modelpool", "p", "-n", ns, "--type=json", "-p",
                '[{"op": "add", "path": "/spec/variants/-", '
                f'"value": {{"name": "b", "acceleratorProfile": "{profile}"}}}}]',
            )  # fmt: skip
            await src.until(
                lambda s: [v.name for v in s.pools[(ns, "p")].spec.variants] == ["a", "b"],
                "the pool's second variant",
            )
            await kubectl(
                cluster, "patch", "routingpolicy", "rp", "-n", ns, "--type=merge", "-p",
                '{"spec": {"modelNames": ["chat", "assistant"]}}',
            )  # fmt: skip
            await src.until(
                lambda s: set(s.public_models()) == {"chat", "assistant"}, "the policy edit"
            )

            # A policy the server accepts but the scheduler cannot use (a scorer parameter
            # that does not exist) is left out and named; the rest of the fleet stays.
            bad = {
                "apiVersion": API_VERSION, "kind": "RoutingPolicy", "metadata": {"name": "params"},
                "spec": {"modelNames": ["other"], "defaultTargets": [{"pool": "p"}],
                         "placement": {"profile": "custom", "scorers": [
                             {"type": "queue", "parameters": {"nonsense": 1}}]}},
            }  # fmt: skip
            await kubectl(cluster, "apply", "-n", ns, "-f", "-", doc=bad)
            await src.until(
                lambda s: any(f"RoutingPolicy {ns}/params" in line for line in src.source.skipped),
                "the bad policy to be named in skipped",
            )
            snap = src.latest
            assert snap is not None
            assert (ns, "params") not in snap.policies and "other" not in snap.public_models()
            assert set(snap.public_models()) == {"chat", "assistant"}
            assert set(endpoints(snap)) == {f"{ns}/e-0", f"{ns}/e-1"}

            # Deleted: a pod leaves; the pool takes its remaining endpoints with it.
            await kubectl(cluster, "delete", "pod", "e-1", "-n", ns, "--wait=false")
            await src.until(lambda s: set(endpoints(s)) == {f"{ns}/e-0"}, "e-1 to leave")
            await kubectl(cluster, "delete", "modelpool", "p", "-n", ns, "--wait=false")
            snap = await src.until(
                lambda s: (ns, "p") not in s.pools and not s.endpoints, "the pool to go"
            )
            assert (ns, "rp") in snap.policies  # a policy naming a missing pool stays
            await kubectl(cluster, "delete", "acceleratorprofile", profile)
            await src.until(lambda s: profile not in s.profiles, "the profile to go")
    finally:
        await asyncio.to_thread(
            cluster.kubectl, "delete", "--ignore-not-found", "acceleratorprofile", profile,
            check=False,
        )  # fmt: skip
