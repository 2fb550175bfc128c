"""Plots and tables of simulated runs (PNG via matplotlib, imported lazily: a dev dependency).

Plots: latency CDFs (TTFT, TPOT, e2e; one line per policy) and load over time (max/mean
imbalance and mean running + waiting per policy; per-instance load of one run). Tables: a
markdown table of metrics per policy with ratios against a reference row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.sim.metrics import LoadSample, RequestRecord, RunMetrics

__all__ = ["markdown_table", "plot_instance_load", "plot_latency_cdfs", "plot_load_over_time"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdfs(runs: Mapping[str, Sequence[RequestRecord]], path: Path) -> None:
    """TTFT / TPOT / e2e CDFs, one line per run label, log-scaled x axis."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, records in runs.items():
        series = {
            "TTFT (s)": [x for r in records if (x := r.ttft_s) is not None],
            "TPOT (s)": [x for r in records if (x := r.tpot_s) is not None],
            "e2e (s)": [x for r in records if (x := r.e2e_s) is not None],
        }
        for ax, (name, vals) in zip(axes, series.items(), strict=True):
            if not vals:
                continue
            xs = np.sort(np.asarray(vals, dtype=float))
            ys = np.arange(1, len(xs) + 1) / len(xs)
            ax.plot(np.maximum(xs, 1e-4), ys, label=label, linewidth=1.2)
            ax.set_xlabel(name)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rolling(x: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average that averages over the samples present at the edges."""
    k = max(1, min(k, len(x)))
    kernel = np.ones(k)
    return np.asarray(
        np.convolve(x, kernel, mode="same") / np.convolve(np.ones_like(x), kernel, mode="same")
    )


def plot_load_over_time(runs: Mapping[str, Sequence[LoadSample]], path: Path) -> None:
    """Per run: max/mean load ratio (30-sample moving average) and mean load over time."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for label, samples in runs.items():
        if not samples:
            continue
        t = np.array([s.time_s for s in samples])
        loads = np.array([s.loads for s in samples], dtype=float)
        mean = loads.mean(axis=1)
        ratio = np.where(mean > 0, loads.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0)
        axes[0].plot(t, _rolling(ratio, 30), label=label, linewidth=1.0)
        axes[1].plot(t, _rolling(mean, 30), label=label, linewidth=1.0)
    axes[0].set_ylabel("max / mean load (moving avg)")
    axes[1].set_ylabel("mean running+waiting per engine")
    axes[1].set_xlabel("virtual time (s)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_instance_load(
    samples: Sequence[LoadSample], endpoint_ids: Sequence[str], path: Path, title: str
) -> None:
    """Heat map of running + waiting per instance over time for one run."""
    plt = _pyplot()
    if not samples:
        return
    loads = np.array([s.loads for s in samples], dtype=float).T
    t0, t1 = samples[0].time_s, samples[-1].time_s
    fig, ax = plt.subplots(figsize=(12, 0.35 * len(endpoint_ids) + 1.5))
    extent = (t0, t1, len(endpoint_ids), 0)
    im = ax.imshow(loads, aspect="auto", interpolation="nearest", extent=extent)
    ax.set_yticks(np.arange(len(endpoint_ids)) + 0.5, labels=list(endpoint_ids), fontsize=7)
    ax.set_xlabel("virtual time (s)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="running + waiting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float, digits: int = 3) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:.{digits}g}"


def markdown_table(rows: Mapping[str, RunMetrics], reference: str | None = None) -> str:
    """One row per run label; ratio columns are against ``reference`` (lower TTFT is better)."""
    head = (
        "| policy | p50 TTFT s | p90 TTFT s | p99 TTFT s | p99 TTFT / ref | p99 TPOT s | p99 e2e s "
        "| goodput req/s | goodput / ref | attainment | hit rate | imbalance | migrations |"
    )
    sep = "|" + " --- |" * 13
    lines = [head, sep]
    ref = rows.get(reference) if reference else None
    for label, m in rows.items():
        r_ttft = m.ttft.p99 / ref.ttft.p99 if ref and ref.ttft.p99 > 0 else float("nan")
        r_good = m.goodput_rps / ref.goodput_rps if ref and ref.goodput_rps > 0 else float("nan")
        lines.append(
            f"| {label} | {_fmt(m.ttft.p50)} | {_fmt(m.ttft.p90)} | {_fmt(m.ttft.p99)} | "
            f"{_fmt(r_ttft)} | {_fmt(m.tpot.p99)} | {_fmt(m.e2e.p99)} | {_fmt(m.goodput_rps)} | "
            f"{_fmt(r_good)} | {m.attainment:.1%} | {m.prefix_hit_rate:.1%} | "
            f"{_fmt(m.load_imbalance)} | {m.migrations} |"
        )
    return "\n".join(lines)
