"""The local fleet of ``modelfleet up``: which engines to start, on which ports, from manifests.

The input is what a cluster would hold — AcceleratorProfile, ModelPool and RoutingPolicy
manifests, as files or folders — and nothing else: ``up`` decides the engines itself. Each
variant gets ``minReplicas`` engines (``--replicas N`` asks for N, held within the variant's
``minReplicas..maxReplicas``); a pool whose variants all have ``minReplicas: 0`` still gets one
engine on its first variant, so every public model name answers.

The plan is written as a *fleet folder* the scheduler reads with its static discovery
(``modelfleet scheduler --config DIR``): one symbolic link per manifest file (so an edit of the
user's RoutingPolicy file is an edit of the scheduler's configuration, applied live by its file
watcher) plus a generated ``StaticEndpoints`` document listing the engines' loopback URLs.

Everything is checked before anything starts: the manifests (the same models and cross-object
checks as ``modelfleet validate --check-refs``, plus the scheduler's own fleet check), the
simulator's support for each pool's model, and the ports. Problems are ``UpError`` lines in the
format of ``modelfleet validate`` (``file: Kind/name: field: message``), naming the user's files.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelfleet.api.common import API_VERSION, Resource
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.api.static import StaticEndpoints
from modelfleet.api.validate import ManifestError, check_references, expand_paths, validate_text
from modelfleet.policy.from_api import check_placement
from modelfleet.scheduler.config import ConfigError, load_static_fleet
from modelfleet.scheduler.fleet import EndpointSpec, FleetSnapshot
from modelfleet.scheduler.launch import engine_command

__all__ = [
    "EnginePlan",
    "UpError",
    "check_port_free",
    "plan_replicas",
    "read_manifests",
    "reserve_ports",
    "write_endpoints",
    "write_fleet",
]

ENDPOINTS_FILE = "zz-modelfleet-up-endpoints.yaml"


class UpError(ValueError):
    """The fleet cannot start; ``problems`` holds one line each, the first the most useful."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class EnginePlan:
    """One engine to start: the variant it serves and its loopback port."""

    namespace: str
    pool: str
    variant: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pool_key(self) -> tuple[str, str]:
        return (self.namespace, self.pool)

    @property
    def id(self) -> str:
        """The scheduler's id of this engine (a static endpoint's default: ``host:port``)."""
        return f"127.0.0.1:{self.port}"

    def spec(self) -> EndpointSpec:
        """As the scheduler reads it from the fleet folder."""
        return EndpointSpec(self.id, self.url, self.namespace, self.pool, self.variant)


def read_manifests(paths: list[str]) -> tuple[list[Path], list[tuple[str, Resource]]]:
    """The manifest files under ``paths`` and their objects (``UpError`` on any problem)."""
    try:
        files = expand_paths(paths)
    except ManifestError as e:
        raise UpError([str(e)]) from None
    if not files:
        raise UpError([f"{', '.join(paths)}: no *.yaml or *.yml files"])
    objects: list[tuple[str, Resource]] = []
    problems: list[str] = []
    for f in files:
        try:
            found, wrong = validate_text(f.read_text(), str(f))
        except (ManifestError, UnicodeDecodeError, OSError) as e:
            problems.append(f"{f}: {e}")
            continue
        problems.extend(str(p) for p in wrong)
        for src, obj in found:
            if isinstance(obj, StaticEndpoints):
                problems.append(
                    f"{src}: StaticEndpoints/{obj.metadata.name}: modelfleet up starts its own "
                    "engines; give it only AcceleratorProfiles, ModelPools and RoutingPolicies"
                )
            elif isinstance(obj, RoutingPolicy):
                problems.extend(
                    f"{src}: RoutingPolicy/{obj.metadata.name}: spec.placement.{field}: {msg}"
                    for field, msg in check_placement(obj.spec.placement)
                )
        objects.extend(found)
    problems.extend(str(p) for p in check_references(objects))
    if not problems and not any(isinstance(o, ModelPool) for _, o in objects):
        problems.append(f"{', '.join(paths)}: no ModelPool: there is nothing to serve")
    if problems:
        raise UpError(problems)
    return files, objects


def plan_replicas(pools: list[ModelPool], replicas: int | None) -> list[tuple[str, str, str, int]]:
    """(namespace, pool, variant, count) for every variant, in manifest order (see the module
    docstring for the rule); a variant with count 0 is listed too."""
    out: list[tuple[str, str, str, int]] = []
    for pool in pools:
        ns = pool.metadata.namespace or "default"
        counts = [
            v.min_replicas
            if replicas is None
            else max(v.min_replicas, min(v.max_replicas, replicas))
            for v in pool.spec.variants
        ]
        if counts and sum(counts) == 0:
            counts[0] = 1
        out += [
            (ns, pool.metadata.name, v.name, n)
            for v, n in zip(pool.spec.variants, counts, strict=True)
        ]
    return out


def check_port_free(host: str, port: int) -> None:
    """``UpError`` if ``host:port`` cannot be bound (in use, or not an address of this host)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As the servers bind: a port in TIME_WAIT after the last run is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise UpError(
                [f"--port {port}: {host}:{port} {why}; pick another with --port"]
            ) from None


def reserve_ports(n: int, avoid: set[int]) -> list[int]:
    """``n`` free loopback ports (from the kernel's ephemeral range), none in ``avoid``."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def write_endpoints(folder: Path, engines: list[EnginePlan]) -> None:
    """(Re)write the fleet folder's ``StaticEndpoints``: one document per namespace listing
    ``engines``. Written to a temporary name and renamed, so the scheduler's file watcher never
    reads half a file."""
    by_ns: dict[str, list[dict[str, str]]] = {}
    for e in engines:
        by_ns.setdefault(e.namespace, []).append(
            {"pool": e.pool, "variant": e.variant, "url": e.url}
        )
    docs = [
        {
            "apiVersion": API_VERSION,
            "kind": "StaticEndpoints",
            "metadata": {"name": "modelfleet-up", "namespace": ns},
            "spec": {"endpoints": eps},
        }
        for ns, eps in by_ns.items()
    ]
    text = "# Written by `modelfleet up`: the engines it runs.\n" + yaml.safe_dump_all(docs)
    tmp = folder / f".{ENDPOINTS_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / ENDPOINTS_FILE)


def write_fleet(
    folder: Path,
    files: list[Path],
    objects: list[tuple[str, Resource]],
    replicas: int | None,
    avoid_ports: set[int],
) -> tuple[FleetSnapshot, list[EnginePlan]]:
    """Write the fleet folder (links + endpoints) and read it back as the scheduler will.

    ``UpError`` when the scheduler would refuse the fleet or the simulator cannot run a pool's
    model; its lines name the user's files, not the links.
    """
    pools = [o for _, o in objects if isinstance(o, ModelPool)]
    counts = plan_replicas(pools, replicas)
    ports = iter(reserve_ports(sum(n for *_, n in counts), avoid_ports))
    engines = [
        EnginePlan(ns, pool, variant, next(ports))
        for ns, pool, variant, n in counts
        for _ in range(n)
    ]
    links: dict[str, str] = {}
    for i, f in enumerate(files):
        link = folder / f"{i:03d}-{f.name}"
        link.symlink_to(f.resolve())
        links[str(link)] = str(f)
    write_endpoints(folder, engines)

    def unlinked(line: str) -> str:
        for link, target in links.items():
            line = line.replace(link, target)
        return line

    try:
        snapshot = load_static_fleet(str(folder))
    except ConfigError as e:
        raise UpError([unlinked(p) for p in e.problems]) from None
    problems: list[str] = []
    for spec in snapshot.endpoints:
        try:
            engine_command(snapshot, spec, 1.0)
        except ValueError as e:
            msg = str(e).removeprefix("--launch-engines: ")
            if msg not in problems:
                problems.append(msg)
    if problems:
        raise UpError(problems)
    return snapshot, engines
