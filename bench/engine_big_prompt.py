"""Does a 10 MB prompt delay the other streams of an engine? (issue 15: by no more than 50 ms)

Starts ``modelfleet engine`` (Llama-3.1-8B on an H100, real time, the real Llama-3
tokenizer), keeps 8 streaming completions of 400 tokens running and records, at the client, the
gap between consecutive chunks of every stream. Each case runs twice in this process: once
alone (the baseline) and once with one 10 MB request sent 0.5 s into the streams. The delay a
big prompt causes is the largest gap with it minus the largest gap without it.

Cases: a 10 MB completion prompt that must be tokenised (``--max-model-len`` large enough for
it, so the tokenizer thread works through ~2.5 M tokens before the request is refused for
lack of KV blocks), the same under the default context (refused before tokenising), and a
10 MB chat message (template + tokenising).

Usage: ``python bench/engine_big_prompt.py [--out bench/results/engine-big-prompt.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

OUT = Path(__file__).resolve().parent / "results" / "engine-big-prompt.md"
STREAMS = 8
TOKENS = 400
BIG = 10 * 1024 * 1024
GOAL = 0.050
BASELINE = 10.0  # seconds of streams without the big request


def start(max_model_len: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "modelfleet.engine", "--model", "llama-3.1-8b",
        "--accelerator", "h100-80gb", "--port", "0", "--max-model-len", str(max_model_len),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        sys.exit(f"engine did not start: {line}")
    return proc, m.group(1)


async def stream(s: aiohttp.ClientSession, url: str, gaps: list[float]) -> int:
    """One streamed completion; appends its decode gaps; returns the chunks it got."""
    body = {"model": "llama-3.1-8b", "prompt": "Tell me a story.", "max_tokens": TOKENS,
            "min_tokens": TOKENS, "ignore_eos": True, "stream": True}  # fmt: skip
    n = 0
    async with s.post(url + "/v1/completions", json=body) as r:
        last = None
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter()
            if last is not None and n > 1:  # after the first token: decode gaps only
                gaps.append(now - last)
            last = now
            n += 1
    return n


async def slot(s: aiohttp.ClientSession, url: str, gaps: list[float], done: asyncio.Event) -> int:
    """Streams back to back until ``done`` (at least one); returns how many were short."""
    short = 0
    while True:
        short += await stream(s, url, gaps) != TOKENS + 1  # tokens + [DONE]
        if done.is_set():
            return short


SENDER = """
import sys, time, urllib.error, urllib.request
data = open(sys.argv[2], "rb").read()
req = urllib.request.Request(sys.argv[1], data=data, headers={"Content-Type": "application/json"})
t0 = time.perf_counter()
try:
    status = urllib.request.urlopen(req, timeout=600).status
except urllib.error.HTTPError as e:
    status = e.code
print(status, time.perf_counter() - t0)
"""


def big_body(kind: str, folder: Path) -> tuple[str, Path]:
    """The 10 MB request, serialised to a file before the run."""
    text = ("The quick brown fox jumps over the lazy dog. " * (BIG // 45 + 1))[:BIG]
    if kind == "chat":
        path = "/v1/chat/completions"
        body = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": text}],
                "max_tokens": 1}  # fmt: skip
    else:
        path, body = "/v1/completions", {"model": "llama-3.1-8b", "prompt": text, "max_tokens": 1}
    file = folder / f"{kind}.json"
    file.write_text(json.dumps(body))
    return path, file


async def big(url: str, path: str, file: Path) -> tuple[int, float]:
    """Sent by another process, so that serialising and writing 10 MB does not stall this
    client's own event loop (which would show up as gaps in the streams it reads)."""
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, url + path, str(file), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    status, took = out.decode().split()
    return int(status), float(took)


async def run(url: str, big_request: tuple[str, Path] | None) -> dict[str, float]:
    """STREAMS slots of back-to-back streams for BASELINE seconds, or, with a big request,
    until it has been answered (so every moment of its handling overlaps the streams)."""
    gaps: list[float] = []
    done = asyncio.Event()
    status, took = 0, 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        slots = [asyncio.create_task(slot(s, url, gaps, done)) for _ in range(STREAMS)]
        if big_request is not None:
            status, took = await big(url, *big_request)
        else:
            await asyncio.sleep(BASELINE)
        done.set()
        short = sum(await asyncio.gather(*slots))
    assert short == 0, f"{short} streams ended early"
    gaps.sort()
    return {"max": gaps[-1], "p99": gaps[int(0.99 * len(gaps))],
            "median": gaps[len(gaps) // 2],
            "status": status, "took": took}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    cases = [
        ("10 MB completion prompt, tokenised (max-model-len 4,000,000)", 4_000_000, "completion"),
        ("10 MB completion prompt, default context (refused before tokenising)", 8192,
         "completion"),
        ("10 MB chat message, templated and tokenised (max-model-len 4,000,000)", 4_000_000,
         "chat"),
    ]  # fmt: skip
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="big-prompt-"))
    for label, max_len, kind in cases:
        request = big_body(kind, folder)
        proc, url = start(max_len)
        try:
            base = asyncio.run(run(url, None))
            loaded = asyncio.run(run(url, request))
        finally:
            proc.terminate()
            proc.wait(30)
            request[1].unlink()
        delay = loaded["max"] - base["max"]
        rows.append((label, base, loaded, delay))
        took = f"big request {loaded['status']} in {loaded['took']:.2f} s"
        print(f"{label}: max gap {base['max'] * 1e3:.1f} -> {loaded['max'] * 1e3:.1f} ms ({took})")
    load = os.getloadavg()
    lines = [
        "# A 10 MB prompt next to running streams",
        "",
        "Command: `python bench/engine_big_prompt.py` (Llama-3.1-8B on a modelled H100, real "
        f"time, Llama-3 tokenizer; {STREAMS} slots of back-to-back {TOKENS}-token streams, 10 s "
        "alone, then until the big request is answered; client-side gaps between consecutive "
        "chunks after the first token).",
        f"Machine: 2 cores shared with other jobs (and with the client); load average at the "
        f"end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. The baseline runs in the same process "
        "just before, against the same engine.",
        "",
        "| case | big request: status, s | gap median ms (base / with) "
        "| gap p99 ms (base / with) | largest gap ms (base / with) | delay ms | "
        "within 50 ms |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    met = True
    for label, base, loaded, delay in rows:
        ok = delay <= GOAL
        met &= ok
        lines.append(
            f"| {label} | {int(loaded['status'])}, {loaded['took']:.2f} | "
            f"{base['median'] * 1e3:.1f} / {loaded['median'] * 1e3:.1f} | "
            f"{base['p99'] * 1e3:.1f} / {loaded['p99'] * 1e3:.1f} | "
            f"{base['max'] * 1e3:.1f} / {loaded['max'] * 1e3:.1f} | {delay * 1e3:+.1f} | "
            f"{'yes' if ok else '**no**'} |"
        )
    lines += [
        "",
        f"Goal (issue 15): a 10 MB prompt delays other streams by at most 50 ms: "
        f"**{'met' if met else 'NOT met'}**.",
        "",
        "The big request is sent by a separate process, so the client's own event loop "
        "never handles its 10 MB. How the engine keeps streaming: the body is read and "
        "parsed on the event loop (json.loads of 10 MB, 12-28 ms here), then "
        "tokenising and chat templating run in one worker thread (the Rust tokenizer releases "
        "the GIL), and a text longer than max-model-len × the longest token is refused "
        "before tokenising.",
    ]
    lines += [
        "",
        "Caveat: on a shared machine the baseline's own largest gap can be as large as the "
        "goal, so a small difference of maxima is within the noise; compare the p99 columns.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
