"""The static fleet source: one YAML file (or a folder of them) describes the whole fleet.

The file holds the same AcceleratorProfile, ModelPool and RoutingPolicy manifests a cluster
would hold, plus ``StaticEndpoints`` documents listing each variant's engine URLs
(:mod:`modelfleet.api.static`). :func:`load_static_fleet` parses it with the API models and
checks it as a whole (:func:`~modelfleet.scheduler.fleet.check_fleet`, references between the
objects included); any problem is a :class:`ConfigError` whose lines name the file, the object
and the field, the format of ``modelfleet validate``.

:class:`StaticFileSource` yields the fleet and then watches the files: a change (a new
modification time, size or file set, checked every ``poll_s``) is re-read and, if it is
valid, yielded as a new snapshot. An invalid edit is logged with its problems and ignored, so
a typo never takes a running scheduler down; the last good fleet keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from modelfleet.api.accelerator import AcceleratorProfile
from modelfleet.api.common import Resource
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.api.static import StaticEndpoints
from modelfleet.api.validate import (
    ManifestError,
    check_references,
    expand_paths,
    validate_text,
)
from modelfleet.scheduler.fleet import (
    EndpointSpec,
    FleetSnapshot,
    PoolKey,
    PredictorCache,
    check_fleet,
)

__all__ = ["ConfigError", "StaticFileSource", "load_static_fleet"]

log = logging.getLogger("modelfleet.scheduler.config")


class ConfigError(ValueError):
    """A fleet configuration that cannot be served; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _files(path: str) -> list[Path]:
    try:
        files = expand_paths([path])
    except ManifestError as e:
        raise ConfigError([str(e)]) from None
    if not files:
        raise ConfigError([f"{path}: no *.yaml or *.yml files"])
    return files


def load_static_fleet(path: str, predictors: PredictorCache | None = None) -> FleetSnapshot:
    """Read and check a static fleet file or folder (``ConfigError`` listing every problem)."""
    objects: list[tuple[str, Resource]] = []
    problems: list[str] = []
    for f in _files(path):
        try:
            found, wrong = validate_text(f.read_text(), str(f))
        except (ManifestError, UnicodeDecodeError, OSError) as e:
            problems.append(f"{f}: {e}")
            continue
        objects.extend(found)
        problems.extend(str(p) for p in wrong)
    problems.extend(str(p) for p in check_references(objects))
    if problems:
        raise ConfigError(problems)
    profiles: dict[str, AcceleratorProfile] = {}
    pools: dict[PoolKey, ModelPool] = {}
    policies: dict[PoolKey, RoutingPolicy] = {}
    endpoints: list[EndpointSpec] = []
    seen: dict[tuple[str, str, str], str] = {}
    for src, obj in objects:
        ns = obj.metadata.namespace or "default"
        key = (obj.kind, ns, obj.metadata.name)
        if key in seen:
            problems.append(
                f"{src}: {obj.kind}/{obj.metadata.name}: metadata.name: also defined in {seen[key]}"
            )
            continue
        seen[key] = src
        if isinstance(obj, AcceleratorProfile):
            profiles[obj.metadata.name] = obj
        elif isinstance(obj, ModelPool):
            pools[(ns, obj.metadata.name)] = obj
        elif isinstance(obj, RoutingPolicy):
            policies[(ns, obj.metadata.name)] = obj
        elif isinstance(obj, StaticEndpoints):
            endpoints.extend(
                EndpointSpec(
                    id=e.endpoint_id,
                    url=e.url.rstrip("/"),
                    namespace=ns,
                    pool=e.pool,
                    variant=e.variant,
                    kv_events=e.kv_events,
                )
                for e in obj.spec.endpoints
            )
    ids = [e.id for e in endpoints]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"{path}: StaticEndpoints: spec.endpoints: endpoint id {dup!r} is repeated")
    if not policies:
        problems.append(f"{path}: no RoutingPolicy: nothing would answer any model name")
    snapshot = FleetSnapshot(
        profiles=profiles,
        pools=pools,
        policies=policies,
        endpoints=tuple(endpoints),
        source=path,
    )
    problems.extend(str(p) for p in check_fleet(snapshot, predictors))
    if problems:
        raise ConfigError(problems)
    return snapshot


def _stamp(path: str) -> tuple[tuple[str, int, int], ...]:
    """What identifies the files' content cheaply: (name, mtime ns, size) of each."""
    try:
        files = expand_paths([path])
    except ManifestError:
        return ()
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


class StaticFileSource:
    """The fleet of a static file or folder, re-read on change (see the module docstring).

    ``poll_s`` bounds how long an edit takes to be noticed; the stat calls it costs are
    microseconds per file. ``on_problems`` (default: a log line) hears of an invalid edit.
    """

    def __init__(
        self,
        path: str,
        *,
        poll_s: float = 0.05,
        predictors: PredictorCache | None = None,
        first: FleetSnapshot | None = None,
    ) -> None:
        self.path = path
        self.poll_s = poll_s
        self.predictors = predictors or PredictorCache()
        self._first = first
        self.rejected = 0
        self.last_problems: list[str] = []

    async def snapshots(self) -> AsyncIterator[FleetSnapshot]:
        stamp = _stamp(self.path)
        current = self._first or load_static_fleet(self.path, self.predictors)
        yield current
        while True:
            await asyncio.sleep(self.poll_s)
            now = _stamp(self.path)
            if now == stamp:
                continue
            stamp = now
            try:
                fresh = load_static_fleet(self.path, self.predictors)
            except ConfigError as e:
                self.rejected += 1
                self.last_problems = e.problems
                log.error(
                    "%s: edit ignored, the last good configuration keeps serving:\n%s",
                    self.path,
                    "\n".join(e.problems),
                )
                continue
            if fresh.version != current.version:
                current = fresh
                yield current
