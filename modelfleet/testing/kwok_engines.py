"""Engine simulators standing in for the vLLM containers of kwok pods, on loopback.

kwok runs pods without containers. With the test control plane's pods on a loopback range
(``Cluster(pod_cidr="127.1.0.0/16")``), every pod's ``status.podIP`` is an address this
machine owns, so a real engine simulator (:mod:`modelfleet.engine`, the same HTTP server as
``modelfleet engine``) can listen on ``<pod IP>:<container port "http">`` — exactly where a
scheduler that discovers engines by pod (labels ``modelfleet.io/pool`` / ``variant``,
``status.podIP``, the ``http`` port) will send requests. No traffic leaves loopback.

:class:`KwokEngines` is the test-side controller that does this: it polls the engine pods of
one namespace (label ``app.kubernetes.io/managed-by=modelfleet-operator`` by default) and

- for a Running pod with an IP, starts an engine configured from the pod itself: served model
  name and simulator profile from the pod annotations (:mod:`modelfleet.api.names`), block
  size, context length, batch limits, tensor parallelism and KV events from the container's
  ``vllm serve`` arguments, the model preset whose Hugging Face id is the ``vllm serve``
  model (else ``default_model``);
- for a pod that starts terminating or disappears, keeps its engine serving until it has no
  running or waiting request (what the pod's ``preStop`` hook does on a real node), bounded
  by ``drain_timeout_s``, then stops it.

:meth:`KwokEngines.endpoints` maps ``<namespace>/<pod>`` to the engine's base URL (the
scheduler's endpoint id → address), :meth:`wait_for` blocks until given pods are served.
All engines run in one background thread with its own event loop; :meth:`stop` ends them
and joins it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfleet.api.names import (
    APP_MANAGED_BY_LABEL,
    FIELD_MANAGER,
    HTTP_PORT_NAME,
    KV_EVENTS_PORT,
    POOL_LABEL,
    SERVED_MODEL_ANNOTATION,
    SIMULATOR_PROFILE_ANNOTATION,
    VARIANT_LABEL,
    endpoint_id,
)
from modelfleet.engine.core import EngineConfig
from modelfleet.engine.kv_events import KVEventsConfig
from modelfleet.engine.profiles import ACCELERATORS, MODELS
from modelfleet.engine.server import EngineServer, ServerConfig, serve

log = logging.getLogger(__name__)

ListPods = Callable[[str, str], list[dict[str, Any]]]


@dataclass
class ServedPod:
    """One engine standing in for one pod."""

    key: str  # <namespace>/<pod>
    pool: str
    variant: str
    url: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    server: EngineServer | None = None
    leaving_since: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 1
    while i < len(args):
        a = args[i]
        if "=" in a and a.startswith("--"):
            k, v = a.split("=", 1)
            out[k] = v
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[a] = args[i + 1]
            i += 1
        else:
            out[a] = ""
        i += 1
    return out


def engine_config_for_pod(
    pod: Mapping[str, Any],
    *,
    ip: str,
    time_scale: float,
    default_model: str = "llama-3-8b",
    default_accelerator: str = "h100-80gb",
) -> tuple[ServerConfig, int]:
    """The simulator's configuration for a pod at ``ip`` (module docstring), and the port."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    args = [str(a) for a in container.get("args") or []]
    flags = _flags(args)
    port = 8000
    for p in container.get("ports") or []:
        if p.get("name") == HTTP_PORT_NAME:
            port = int(p.get("containerPort", port))
    accel = annotations.get(SIMULATOR_PROFILE_ANNOTATION) or default_accelerator
    if accel not in ACCELERATORS:
        accel = default_accelerator
    model_id = args[0] if args else ""
    model = next((m for m in MODELS.values() if m.hf_name == model_id), None)
    tp = int(flags.get("--tensor-parallel-size", "1"))
    overrides: dict[str, object] = {}
    for flag, key in (
        ("--block-size", "block_size"),
        ("--max-num-seqs", "max_num_seqs"),
        ("--max-num-batched-tokens", "max_num_batched_tokens"),
        ("--max-model-len", "max_model_len"),
    ):
        if flag in flags:
            overrides[key] = int(flags[flag])
    if "--no-enable-prefix-caching" in flags:
        overrides["enable_prefix_caching"] = False
    kv = KVEventsConfig()
    if "--kv-events-config" in flags:
        overrides["prefix_caching_hash_algo"] = flags.get("--prefix-caching-hash-algo", "sha256")
        overrides["hash_seed"] = "0"
        # the pod's own address (engines share this machine), and the topic the kubelet
        # would have expanded from $(POD_NAME)
        served_name = annotations.get(SERVED_MODEL_ANNOTATION, "")
        kv = KVEventsConfig.from_json_dict(
            {
                **json.loads(flags["--kv-events-config"]),
                "endpoint": f"tcp://{ip}:{KV_EVENTS_PORT}",
                "topic": f"kv@{meta.get('name', '')}@{served_name}",
            }
        )
    engine = EngineConfig.for_model(accel, model.name if model else default_model, tp, **overrides)
    served = annotations.get(SERVED_MODEL_ANNOTATION) or flags.get("--served-model-name", "")
    return (
        ServerConfig(
            engine=engine,
            served_model_names=(served,) if served else (),
            time_scale=time_scale,
            kv_events=kv,
            enable_prompt_tokens_details=True,
        ),
        port,
    )


class KwokEngines:
    """Serve an engine simulator for every running engine pod of ``namespace`` (module
    docstring). ``list_pods(namespace, label_selector)`` returns pods as the API does (e.g.
    ``lambda ns, sel: kube.list_objects("Pod", ns, sel)`` or a ClusterClient call)."""

    def __init__(
        self,
        list_pods: ListPods,
        namespace: str,
        *,
        selector: str = f"{APP_MANAGED_BY_LABEL}={FIELD_MANAGER}",
        time_scale: float = 0.05,
        poll_s: float = 0.2,
        drain_timeout_s: float = 30.0,
        default_model: str = "llama-3-8b",
        default_accelerator: str = "h100-80gb",
    ) -> None:
        self.list_pods = list_pods
        self.namespace = namespace
        self.selector = selector
        self.time_scale = time_scale
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.default_model = default_model
        self.default_accelerator = default_accelerator
        self._served: dict[str, ServedPod] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kwok-engines", daemon=True)
        self.errors: list[str] = []
        self.served_ever: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every engine and the thread."""
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("kwok engines did not stop")

    def __enter__(self) -> KwokEngines:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries --------------------------------------------------------------------------

    def endpoints(self, pool: str | None = None) -> dict[str, str]:
        """``<namespace>/<pod>`` → base URL of the engines serving now (ready ones)."""
        with self._lock:
            return {
                k: s.url
                for k, s in self._served.items()
                if s.ready.is_set() and s.leaving_since is None and (pool is None or s.pool == pool)
            }

    def server(self, key: str) -> EngineServer | None:
        with self._lock:
            s = self._served.get(key)
            return s.server if s is not None else None

    def wait_for(
        self, count: int, pool: str | None = None, timeout: float = 60.0
    ) -> dict[str, str]:
        """Block until ``count`` engines (of ``pool``) serve; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            eps = self.endpoints(pool)
            if len(eps) >= count:
                return eps
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(eps)}/{count} engines serving after {timeout} s: {eps}")
            time.sleep(0.05)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    pods = await asyncio.to_thread(self.list_pods, self.namespace, self.selector)
                except Exception as err:  # the API may be briefly unreachable
                    self.errors.append(f"list pods: {err}")
                    pods = None
                if pods is not None:
                    await self._sync(pods)
                await asyncio.sleep(self.poll_s)
        finally:
            with self._lock:
                served = list(self._served.values())
            for s in served:
                s.stop.set()
            await asyncio.gather(*(s.task for s in served), return_exceptions=True)

    async def _sync(self, pods: list[dict[str, Any]]) -> None:
        seen: set[str] = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            key = endpoint_id(str(meta.get("namespace", self.namespace)), str(meta.get("name")))
            status = pod.get("status") or {}
            ip = status.get("podIP")
            if meta.get("deletionTimestamp"):
                continue  # leaving: handled below like a vanished pod
            seen.add(key)
            with self._lock:
                known = key in self._served
            if not known and status.get("phase") == "Running" and ip:
                self._start_engine(key, pod, str(ip))
        now = time.monotonic()
        with self._lock:
            leaving = [s for k, s in self._served.items() if k not in seen]
        for s in leaving:
            if s.leaving_since is None:
                s.leaving_since = now
            busy = 0
            if s.server is not None:
                stats = s.server.core.stats()
                busy = stats.num_running + stats.num_waiting
            if busy == 0 or now - s.leaving_since > self.drain_timeout_s:
                s.stop.set()
                with contextlib.suppress(Exception):
                    await s.task
                with self._lock:
                    self._served.pop(s.key, None)

    def _start_engine(self, key: str, pod: dict[str, Any], ip: str) -> None:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            config, port = engine_config_for_pod(
                pod,
                ip=ip,
                time_scale=self.time_scale,
                default_model=self.default_model,
                default_accelerator=self.default_accelerator,
            )
        except ValueError as err:
            self.errors.append(f"{key}: {err}")
            return
        stop = asyncio.Event()
        served: ServedPod

        def started(server: EngineServer, bound: int) -> None:
            served.server = server
            served.ready.set()

        async def run() -> None:
            try:
                await serve(config, ip, port, started=started, stop=stop)
            except OSError as err:
                self.errors.append(f"{key}: cannot serve on {ip}:{port}: {err}")

        task = asyncio.get_running_loop().create_task(run())
        served = ServedPod(
            key=key,
            pool=str(labels.get(POOL_LABEL, "")),
            variant=str(labels.get(VARIANT_LABEL, "")),
            url=f"http://{ip}:{port}",
            stop=stop,
            task=task,
        )
        with self._lock:
            self._served[key] = served
            self.served_ever.add(key)
