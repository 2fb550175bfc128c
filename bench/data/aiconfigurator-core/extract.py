"""Extract the Llama-3-8B/70B subset of the aiconfigurator-core vLLM kernel tables to CSV.

Run once by hand (needs pyarrow, which is NOT a modelfleet dependency):
    python bench/data/aiconfigurator-core/extract.py /work/shared/data/aiconfigurator-core
Writes gemm.csv, context_attention.csv, generation_attention.csv, allreduce.csv next to itself.
"""

import bisect
import csv
import sys
from pathlib import Path

import pyarrow.parquet as pq

SYSTEMS = {"a100_sxm": "0.14.0", "h100_sxm": "0.24.0", "l40s": "0.24.0"}
COMM = {"a100_sxm": "0.14.0", "h100_sxm": "0.24.0", "l40s": "0.22.0"}
# (hidden, heads, kv_heads, ffn, vocab) of Llama-3-8B, Llama-3-70B and Llama-2-70B (splitwise)
MODELS = [(4096, 32, 8, 14336, 128256), (8192, 64, 8, 28672, 128256), (8192, 64, 8, 28672, 32000)]
TPS = [1, 2, 4, 8]


def bracket(grid: list[int], x: int) -> set[int]:
    i = bisect.bisect_left(grid, x)
    out = {grid[min(i, len(grid) - 1)]}
    if i > 0:
        out.add(grid[i - 1])
    return out


def main(src: Path) -> None:
    here = Path(__file__).parent
    gemm_rows, ctx_rows, gen_rows, ar_rows = [], [], [], []
    for sysname, ver in SYSTEMS.items():
        base = src / "systems" / "data" / sysname
        g = [
            r
            for r in pq.read_table(base / "gemm" / "vllm" / ver / "gemm_perf.parquet").to_pylist()
            if r["gemm_dtype"] == "bfloat16"
        ]
        ngrid = sorted({r["n"] for r in g})
        kgrid = sorted({r["k"] for r in g})
        pairs: set[tuple[int, int]] = set()
        heads: set[tuple[int, int]] = set()
        for hidden, nh, nkv, ffn, vocab in MODELS:
            hd = hidden // nh
            for t in TPS:
                for n, k in [
                    ((nh + 2 * nkv) * hd // t, hidden),
                    (hidden, hidden // t),
                    (2 * ffn // t, hidden),
                    (hidden, ffn // t),
                    (vocab // t, hidden),
                ]:
                    for nn in bracket(ngrid, n):
                        for kk in bracket(kgrid, k):
                            pairs.add((nn, kk))
                heads.add((nh // t, max(1, nkv // t)))
        for r in g:
            if (r["n"], r["k"]) in pairs:
                gemm_rows.append([sysname, r["m"], r["n"], r["k"], r["latency"]])
        for kind, rows in (("context", ctx_rows), ("generation", gen_rows)):
            path = base / "attention" / "vllm" / ver / f"{kind}_attention_perf.parquet"
            for r in pq.read_table(path).to_pylist():
                if (
                    r["kv_cache_dtype"] == "bfloat16"
                    and r["head_dim"] == 128
                    and r.get("window_size", 0) == 0
                    and (r["num_heads"], r["num_key_value_heads"]) in heads
                ):
                    rows.append(
                        [
                            sysname,
                            r["batch_size"],
                            r["isl"],
                            r["step"],
                            r["num_heads"],
                            r["num_key_value_heads"],
                            r["latency"],
                        ]
                    )
        cpath = base / "comm" / "vllm" / COMM[sysname] / "custom_allreduce_perf.parquet"
        for r in pq.read_table(cpath).to_pylist():
            if r["backend"] == "vllm_graph":
                ar_rows.append([sysname, r["num_gpus"], r["message_size"], r["latency"]])
    for name, header, rows in (
        ("gemm.csv", ["system", "m", "n", "k", "latency_ms"], gemm_rows),
        (
            "context_attention.csv",
            ["system", "batch_size", "isl", "step", "num_heads", "num_kv_heads", "latency_ms"],
            ctx_rows,
        ),
        (
            "generation_attention.csv",
            ["system", "batch_size", "isl", "step", "num_heads", "num_kv_heads", "latency_ms"],
            gen_rows,
        ),
        ("allreduce.csv", ["system", "num_gpus", "message_size", "latency_ms"], ar_rows),
    ):
        rows.sort()
        with open(here / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        print(name, len(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
