"""``modelfleet scheduler`` as a child process: start it, wait for it, stop it without a trace.

Shared by the scheduler tier (static fleets) and the cluster tier (``--kubernetes``):

* :func:`free_port`: a free loopback port;
* :func:`wait_listening`: the URL from the command's ``listening on`` line (its stdout);
* :func:`session_processes`: command lines of the processes of the Ray session a driver
  started (Ray names its session dir after the driver's pid);
* :func:`stop_scheduler`: SIGINT, wait (SIGKILL after 60 s), then SIGKILL whatever of its Ray
  session is left; returns the exit code and what outlived it, for the caller to assert on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_processes(pid: int) -> list[str]:
    """Command lines of processes of the Ray session a driver ``pid`` started."""
    pattern = re.compile(rf"session_[0-9_\-]+_{pid}\b")
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern.search(cmd):
            out.append(f"{entry.name}: {cmd[:160]}")
    return out


def stop_scheduler(proc: subprocess.Popen[str], settle_s: float = 1.0) -> tuple[int, list[str]]:
    """SIGINT the scheduler, wait for it (SIGKILL after 60 s), then SIGKILL whatever of its
    session is left ``settle_s`` later: (its exit code, the processes that outlived it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    time.sleep(settle_s)
    left = session_processes(proc.pid)
    for line in left:
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    return rc, left


def wait_listening(proc: subprocess.Popen[str], timeout: float = 180.0) -> str:
    """The URL of the scheduler's ``listening on`` line (``RuntimeError`` if it exits first)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"scheduler exited with {proc.wait()}")
        m = re.search(r"scheduler listening on (http://\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError("scheduler did not listen in time")
