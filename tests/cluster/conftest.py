"""Cluster tier: one real Kubernetes control plane per test session.

* Binaries: when any test of this folder is selected, collection ends by locating the
  control-plane binaries and building them with ``e2e/controlplane/build.sh`` if they are
  missing (12-25 minutes the first time; the build's output is shown live). This happens at
  collection, outside every test's timeout. If the build fails, every test here fails with the
  reason — nothing is skipped.
* ``cluster`` (session): etcd, kube-apiserver, controller-manager, scheduler and kwok with the
  default simulated nodes (H100, A100, L40S, L4, CPU); component logs are kept under pytest's
  temp dir (``controlplane-logs*``). With ``$MODELFLEET_TEST_KUBECONFIG`` set, the tests run
  against that existing cluster instead (e2e/kind/run.sh), and only kubectl and helm are needed.
* ``namespace``: a fresh namespace per test, deleted afterwards; tests isolate themselves there.
* ``kubectl``: ``cluster.kubectl`` (raises ``KubectlError`` with the output on failure).
* ``installed_crds``: ``crds/*.yaml`` applied and Established, once per session.
* ``try_create(doc, namespace)``: POST one object as kubectl does (strict field validation);
  returns (status, body, text) and deletes an accepted object again (``keep=True`` keeps it).
* ``no_leaked_processes`` (session): FAILS the run if a process naming this run's cluster temp
  dir, or a control-plane binary started by this run, outlives the suite (and kills it, so the
  machine stays clean); other runs' clusters on the same machine are left alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.testing.cluster import (
    ENV_TEST_KUBECONFIG,
    Binaries,
    Cluster,
    ClusterClient,
    ClusterError,
    locate_binaries,
)
from modelfleet.testing.cluster_manifests import load_manifests

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
#: kwok hands pod IPs out of this loopback range (see Cluster's pod_cidr).
POD_CIDR = "127.1.0.0/16"

_BINARIES = pytest.StashKey[Binaries]()
_BINARIES_ERROR = pytest.StashKey[str]()
_WORKDIRS = pytest.StashKey[list[str]]()


def _selected_here(session: pytest.Session) -> bool:
    """True if a cluster-tier test of this folder will run (unit tests here need no cluster)."""
    here = Path(__file__).parent
    return any(
        here in Path(str(item.path)).parents and item.get_closest_marker("cluster")
        for item in session.items
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Locate (or build) the binaries before any test runs, outside per-test timeouts."""
    config = session.config
    if not _selected_here(session) or _BINARIES in config.stash or _BINARIES_ERROR in config.stash:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    client_only = bool(os.environ.get(ENV_TEST_KUBECONFIG))
    try:
        try:
            found = locate_binaries(build=False, client_only=client_only)
        except ClusterError:
            if reporter is not None:
                reporter.write_line("cluster tier: building the control plane (build.sh) ...")
            if capman is not None:
                with capman.global_and_fixture_disabled():
                    found = locate_binaries(build=True, client_only=client_only)
            else:
                found = locate_binaries(build=True, client_only=client_only)
        config.stash[_BINARIES] = found
    except ClusterError as err:
        config.stash[_BINARIES_ERROR] = str(err)


def _binaries(config: pytest.Config) -> Binaries:
    if _BINARIES_ERROR in config.stash:
        pytest.fail(f"cluster tier cannot run: {config.stash[_BINARIES_ERROR]}", pytrace=False)
    if _BINARIES not in config.stash:  # e.g. collected by a plugin that skipped the hook
        try:
            config.stash[_BINARIES] = locate_binaries(build=True)
        except ClusterError as err:
            config.stash[_BINARIES_ERROR] = str(err)
            pytest.fail(f"cluster tier cannot run: {err}", pytrace=False)
    return config.stash[_BINARIES]


def _descends_from_us(pid: int) -> bool:
    """True if ``pid`` is a child (at any depth) of this pytest process."""
    me = os.getpid()
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, ppid
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _suspects(binaries: Binaries, workdirs: list[str]) -> dict[int, str]:
    """pid → command line of processes naming a workdir of this session, or running a
    control-plane binary as a descendant of this process. Another session's control plane,
    kubectl or helm (several engineers share one binary cache) is never a suspect."""
    exes = {os.path.realpath(binaries.bin_dir / t) for t in ("controlplane", "kwok", "helm")}
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            exe = os.readlink(entry / "exe").removesuffix(" (deleted)")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = exe in exes and _descends_from_us(int(entry.name))
        if ours or any(w in cmdline for w in workdirs):
            out[int(entry.name)] = cmdline.strip()
    return out


@pytest.fixture(scope="session")
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the run if a control-plane or kwok process started by this suite outlives it."""
    binaries = _binaries(request.config)
    workdirs: list[str] = request.config.stash.setdefault(_WORKDIRS, [])
    before = set(_suspects(binaries, workdirs))  # e.g. a developer's `dev-cluster up`
    yield
    deadline = time.monotonic() + 5
    leaked = {p: c for p, c in _suspects(binaries, workdirs).items() if p not in before}
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = {p: c for p, c in _suspects(binaries, workdirs).items() if p not in before}
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if leaked:
        lines = "\n".join(f"  pid {p}: {c[:200]}" for p, c in sorted(leaked.items()))
        pytest.fail(f"processes outlived the cluster tier (now killed):\n{lines}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(
    no_leaked_processes: None,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ClusterClient]:
    binaries = _binaries(request.config)
    if external := os.environ.get(ENV_TEST_KUBECONFIG):
        client = ClusterClient.from_kubeconfig(binaries, Path(external))
        try:
            yield client
        finally:
            client.close()
        return
    log_dir = tmp_path_factory.mktemp("controlplane-logs")
    # Pod IPs on loopback, so engine simulators can stand in for pods (tests/cluster/e2e).
    c = Cluster(binaries, log_dir=log_dir, pod_cidr=POD_CIDR)
    try:
        c.start()
    except ClusterError as err:
        pytest.fail(f"control plane did not start (logs in {log_dir}): {err}", pytrace=False)
    request.config.stash[_WORKDIRS].append(str(c.workdir))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def kubectl(cluster: ClusterClient) -> Callable[..., Any]:
    return cluster.kubectl


@pytest.fixture
def namespace(cluster: ClusterClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for each test (``t-<test name>-<random>``), deleted after it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(name)
    yield name
    cluster.delete_namespace(name)


@pytest.fixture(scope="session")
def installed_crds(cluster: ClusterClient) -> list[dict[str, Any]]:
    """Every CRD of crds/*.yaml, applied (server-side) and Established."""
    crds = [d for f in sorted(CRD_DIR.glob("*.yaml")) for d in load_manifests(f)]
    if not crds:
        pytest.fail(f"no CustomResourceDefinitions in {CRD_DIR}", pytrace=False)
    for f in sorted(CRD_DIR.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(f))
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return crds


#: What the API server answered to one create: HTTP status, decoded body, raw text.
Created = tuple[int, dict[str, Any], str]


@pytest.fixture
def try_create(cluster: ClusterClient) -> Callable[[dict[str, Any], str], Created]:
    """POST an object as kubectl would (``fieldValidation=Strict``) into a namespace (dropped
    for cluster-scoped kinds); an accepted object is deleted again. Returns the answer."""

    def create(doc: dict[str, Any], namespace: str, *, keep: bool = False) -> Created:
        doc = json.loads(json.dumps(doc))
        doc.setdefault("metadata", {})["namespace"] = namespace
        collection = cluster.resource_path(doc["apiVersion"], doc["kind"], namespace)
        if "/namespaces/" not in collection:
            doc["metadata"].pop("namespace")
        resp = cluster.api("POST", f"{collection}?fieldValidation=Strict", doc)
        if resp.status in (200, 201) and not keep:
            cluster.api("DELETE", f"{collection}/{doc['metadata']['name']}")
        return resp.status, resp.body, resp.text

    return create  # type: ignore[return-value]
