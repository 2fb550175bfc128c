"""``modelfleet top``: a live terminal view of a running scheduler's fleet, refreshed every second.

    modelfleet top [--url http://127.0.0.1:8000] [-f DIR_OR_FILE ...] [--interval 1] [--once]

What it reads, each refresh:

* the scheduler's ``/metrics`` (``modelfleet_*``): its instances per pool and variant and their
  health (``modelfleet_endpoint_up``), requests in flight, answered requests, TTFT and TPOT
  histograms, migrations when the scheduler exports them (``modelfleet_migrations_total``);
* each instance's own ``/metrics`` (the instance id is its ``host:port``, as the static fleet
  names it): running and waiting requests, KV-cache usage, prefix-cache hits
  (:func:`modelfleet.scheduler.scrape.parse_vllm_metrics`, the scheduler's parser);
* the manifests (``-f``, default ``examples/quickstart`` as for ``modelfleet up``): each pool's
  SLO and each variant's cost per replica-hour (``costPerHour``, else its AcceleratorProfile's
  × ``gpusPerReplica``).

Rates, hit rates and latency percentiles are over the last ``--window`` seconds: the
difference between the newest counters and those of the oldest kept scrape (cumulative until
one is that old). Percentiles come from the histogram buckets (the upper bound of the bucket
where the rank falls), so they are as coarse as the buckets. ``--once`` prints one frame (two
scrapes ``--interval`` apart) and exits, for scripts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modelfleet import cliargs

__all__ = ["Scrape", "add_arguments", "histogram_quantile", "run"]

#: (pool, variant)
Key = tuple[str, str]


@dataclass
class Scrape:
    """What one refresh read (counters cumulative, as exported)."""

    at: float
    up: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # endpoint → pool, var, ok
    inflight: dict[str, float] = field(default_factory=dict)
    requests: dict[Key, float] = field(default_factory=dict)
    errors: dict[Key, float] = field(default_factory=dict)
    ttft: dict[Key, dict[float, float]] = field(default_factory=dict)  # le → cumulative count
    tpot: dict[Key, dict[float, float]] = field(default_factory=dict)
    migrations: float | None = None
    engines: dict[str, Any] = field(default_factory=dict)  # endpoint → EngineMetrics


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (0..1) of cumulative ``buckets``
    (``le`` → count); the largest finite bound when it falls in ``+Inf``; None when empty."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    finite = [b for b in bounds if math.isfinite(b)]
    for b in bounds:
        if buckets[b] >= rank:
            return b if math.isfinite(b) else (finite[-1] if finite else None)
    return None


def _minus(new: dict[float, float], old: dict[float, float] | None) -> dict[float, float]:
    if old is None:
        return dict(new)
    return {le: max(0.0, v - old.get(le, 0.0)) for le, v in new.items()}


def parse_scheduler(text: str, at: float) -> Scrape:
    """The ``modelfleet_*`` families of a scheduler's ``/metrics`` body."""
    from prometheus_client.parser import text_string_to_metric_families

    s = Scrape(at=at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            lb = sample.labels
            name = sample.name
            key = (lb.get("pool", ""), lb.get("variant", ""))
            if name == "modelfleet_endpoint_up":
                s.up[lb["endpoint"]] = (key[0], key[1], sample.value > 0)
            elif name == "modelfleet_inflight_requests":
                s.inflight[lb["endpoint"]] = sample.value
            elif name == "modelfleet_requests_total":
                s.requests[key] = s.requests.get(key, 0.0) + sample.value
                if lb.get("outcome") == "error":
                    s.errors[key] = s.errors.get(key, 0.0) + sample.value
            elif name in ("modelfleet_ttft_seconds_bucket", "modelfleet_tpot_seconds_bucket"):
                hist = s.ttft if name.startswith("modelfleet_ttft") else s.tpot
                le = float(lb["le"])
                per = hist.setdefault(key, {})
                per[le] = per.get(le, 0.0) + sample.value  # summed over SLO classes
            elif name.startswith("modelfleet_migrations") and name.endswith("_total"):
                s.migrations = (s.migrations or 0.0) + sample.value
    return s


@dataclass(frozen=True)
class VariantInfo:
    accelerator: str
    cost_per_hour: float | None
    ttft_slo_s: float | None
    tpot_slo_s: float | None


def manifest_info(paths: list[str]) -> dict[Key, VariantInfo]:
    """SLOs and replica costs of every variant in the manifests ({} when none are readable)."""
    from modelfleet.api.accelerator import AcceleratorProfile
    from modelfleet.api.modelpool import ModelPool
    from modelfleet.api.validate import ManifestError, expand_paths, validate_text

    try:
        files = expand_paths(paths)
    except ManifestError:
        return {}
    objects = []
    for f in files:
        try:
            found, _ = validate_text(f.read_text(), str(f))
        except (ManifestError, UnicodeDecodeError, OSError):
            continue
        objects += [o for _, o in found]
    profiles = {o.metadata.name: o for o in objects if isinstance(o, AcceleratorProfile)}
    out: dict[Key, VariantInfo] = {}
    for pool in (o for o in objects if isinstance(o, ModelPool)):
        slo = pool.spec.slo
        for v in pool.spec.variants:
            prof = profiles.get(v.accelerator_profile)
            cost = v.cost_per_hour
            if cost is None and prof is not None:
                cost = prof.spec.cost_per_hour * v.gpus_per_replica
            out[(pool.metadata.name, v.name)] = VariantInfo(
                accelerator=v.accelerator_profile,
                cost_per_hour=cost,
                ttft_slo_s=slo.ttft_ms / 1000 if slo and slo.ttft_ms else None,
                tpot_slo_s=slo.tpot_ms / 1000 if slo and slo.tpot_ms else None,
            )
    return out


class Watcher:
    """Scrapes the scheduler and its instances, keeps ``window_s`` of history."""

    def __init__(self, url: str, window_s: float) -> None:
        import httpx

        self.url = url.rstrip("/").removesuffix("/v1")
        self.window_s = window_s
        self.client = httpx.Client(timeout=0.5)
        self.history: deque[Scrape] = deque()
        self.error = ""

    def poll(self) -> Scrape | None:
        import httpx

        from modelfleet.scheduler.scrape import ScrapeError, parse_vllm_metrics

        now = time.monotonic()
        try:
            r = self.client.get(f"{self.url}/metrics")
            r.raise_for_status()
            s = parse_scheduler(r.text, now)
        except (httpx.HTTPError, ValueError) as e:
            self.error = f"{self.url}/metrics: {e}"
            return None
        self.error = ""
        for endpoint in s.up:
            base = endpoint if "://" in endpoint else f"http://{endpoint}"
            try:
                er = self.client.get(f"{base}/metrics")
                er.raise_for_status()
                s.engines[endpoint] = parse_vllm_metrics(er.text)
            except (httpx.HTTPError, ScrapeError):
                continue
        self.history.append(s)
        while len(self.history) > 2 and now - self.history[1].at >= self.window_s:
            self.history.popleft()
        return s

    def close(self) -> None:
        self.client.close()


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}" if v < 10 else f"{v:.0f}s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _lat(buckets: dict[float, float], slo: float | None) -> str:
    p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
    text = f"{_ms(p50)}/{_ms(p99)}"
    if slo is None or p99 is None:
        return text + (f" ({_ms(slo)})" if slo else "")
    colour = "green" if p99 <= slo else "red"
    return f"[{colour}]{text}[/] ({_ms(slo)})"


def render(w: Watcher, info: dict[Key, VariantInfo]) -> Any:
    """The frame: a header, a row per pool variant, a row per instance."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not w.history:
        return Text(f"modelfleet top: waiting for {w.url} ... {w.error}")
    new, old = w.history[-1], (w.history[0] if len(w.history) > 1 else None)
    span = new.at - old.at if old else 0.0
    keys = sorted({(p, v) for p, v, _ in new.up.values()} | set(new.requests))
    by_key: dict[Key, list[str]] = {}
    for ep, (p, v, _) in new.up.items():
        by_key.setdefault((p, v), []).append(ep)

    def hit(eps: Iterable[str]) -> float | None:
        q = h = 0.0
        for ep in eps:
            m = new.engines.get(ep)
            if m is None:
                continue
            m0 = old.engines.get(ep) if old else None
            q += m.prefix_cache_queries - (m0.prefix_cache_queries if m0 else 0.0)
            h += m.prefix_cache_hits - (m0.prefix_cache_hits if m0 else 0.0)
        return h / q if q > 0 else None

    total_cost = 0.0
    ready = sum(ok for _, _, ok in new.up.values())
    pools = Table(title="pools and variants", title_justify="left", expand=True)
    for col in ("pool", "variant", "GPU", "ready", "running", "waiting", "KV", "prefix hit",
                "req/s", "TTFT p50/p99 ms (SLO)", "TPOT p50/p99 ms (SLO)", "$/h"):  # fmt: skip
        pools.add_column(col, justify="left" if col in ("pool", "variant", "GPU") else "right")
    for key in keys:
        eps = by_key.get(key, [])
        vi = info.get(key)
        ms = [new.engines[e] for e in eps if e in new.engines]
        n_ready = sum(new.up[e][2] for e in eps)
        cost = vi.cost_per_hour * n_ready if vi and vi.cost_per_hour is not None else None
        total_cost += cost or 0.0
        reqs = new.requests.get(key, 0.0) - (old.requests.get(key, 0.0) if old else 0.0)
        pools.add_row(
            key[0], key[1], vi.accelerator if vi else "-", f"{n_ready}/{len(eps)}",
            str(sum(m.running for m in ms)), str(sum(m.waiting for m in ms)),
            _pct(sum(m.kv_cache_usage for m in ms) / len(ms) if ms else None), _pct(hit(eps)),
            f"{reqs / span:.2f}" if span > 0 else "-",
            _lat(_minus(new.ttft.get(key, {}), old.ttft.get(key) if old else None),
                 vi.ttft_slo_s if vi else None),
            _lat(_minus(new.tpot.get(key, {}), old.tpot.get(key) if old else None),
                 vi.tpot_slo_s if vi else None),
            "-" if cost is None else f"{cost:.2f}",
        )  # fmt: skip
    inst = Table(title="instances", title_justify="left", expand=True)
    for col in ("instance", "pool/variant", "up", "in flight", "running", "waiting", "KV",
                "prefix hit"):  # fmt: skip
        inst.add_column(col, justify="left" if col in ("instance", "pool/variant") else "right")
    for ep in sorted(new.up, key=lambda e: (new.up[e][0], new.up[e][1], e)):
        p, v, ok = new.up[ep]
        m = new.engines.get(ep)
        inst.add_row(
            ep, f"{p}/{v}", "[green]yes[/]" if ok else "[red]no[/]",
            f"{new.inflight.get(ep, 0):.0f}",
            "-" if m is None else str(m.running), "-" if m is None else str(m.waiting),
            "-" if m is None else _pct(m.kv_cache_usage), _pct(hit([ep])),
        )  # fmt: skip
    migrations = "not exported" if new.migrations is None else f"{new.migrations:.0f}"
    if new.migrations is not None and old is not None and old.migrations is not None:
        migrations += f" ({new.migrations - old.migrations:.0f} in the window)"
    header = Text.from_markup(
        f"[bold]modelfleet top[/]  {w.url}  instances ready {ready}/{len(new.up)}  "
        f"cost ${total_cost:.2f}/h  migrations {migrations}  window {span:.0f} s  "
        f"{time.strftime('%H:%M:%S')}" + (f"  [red]{w.error}[/]" if w.error else "")
    )
    return Group(header, pools, inst)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default="http://127.0.0.1:8000",
        help="the scheduler (default http://127.0.0.1:8000, where modelfleet up serves)",
    )  # fmt: skip
    p.add_argument(
        "-f", "--filename", dest="paths", action="append", metavar="DIR_OR_FILE",
        help="the fleet's manifests, for SLOs and costs (default: examples/quickstart)",
    )  # fmt: skip
    p.add_argument("--interval", type=cliargs.positive_float, default=1.0, metavar="S")
    p.add_argument(
        "--window", type=cliargs.positive_float, default=30.0, metavar="S",
        help="rates and percentiles over the last S seconds (default 30)",
    )  # fmt: skip
    p.add_argument("--once", action="store_true", help="print one frame and exit")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from modelfleet.local.up import default_manifests

    found = default_manifests()
    paths = list(args.paths or ([str(found)] if found else []))
    info = manifest_info(paths) if paths else {}
    w = Watcher(args.url, args.window)
    console = Console()
    try:
        if args.once:
            w.poll()
            time.sleep(args.interval)
            if w.poll() is None:
                print(f"modelfleet top: {w.error}", file=sys.stderr)
                return 1
            console.print(render(w, info))
            return 0
        with Live(render(w, info), console=console, screen=True, auto_refresh=False) as live:
            while True:
                w.poll()
                live.update(render(w, info), refresh=True)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        w.close()
    return 0
