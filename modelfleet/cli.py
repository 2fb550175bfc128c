"""The ``modelfleet`` command: one composition root per subcommand.

Subcommands are registered explicitly here (no import side effects); each has an
``add_arguments(parser)`` and a ``run(args) -> int``. Heavy modules are imported only when
their subcommand runs, so ``modelfleet validate`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelfleet import __version__

DEFAULT_CRD_DIR = "crds"
#: The Helm chart's copy of the CRDs (helm installs charts/modelfleet/crds/ before the release).
DEFAULT_CHART_CRD_DIR = "charts/modelfleet/crds"


def _crds_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_CRD_DIR, help="directory to write into (default: crds)")
    p.add_argument(
        "--chart-out",
        default=DEFAULT_CHART_CRD_DIR,
        help="the chart's copy, written and checked too when the directory exists "
        "(default: charts/modelfleet/crds; '' = none)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the files in --out (or --chart-out) differ from a fresh "
        "generation",
    )


def _crds_run(args: argparse.Namespace) -> int:
    from modelfleet.api import KINDS
    from modelfleet.api.crdgen import crd_filename, render_crd, write_crds

    outs = [Path(args.out)]
    if args.chart_out and Path(args.chart_out).is_dir():
        outs.append(Path(args.chart_out))
    if args.check:
        stale = [
            out / crd_filename(k)
            for out in outs
            for k in KINDS
            if not (out / crd_filename(k)).exists()
            or (out / crd_filename(k)).read_text() != render_crd(k)
        ]
        for path in stale:
            print(f"{path}: differs from the models; run `modelfleet crds`", file=sys.stderr)
        return 1 if stale else 0
    for out in outs:
        for path in write_crds(out):
            print(path)
    return 0


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="FILE", help="manifests or directories")
    p.add_argument(
        "--check-refs",
        action="store_true",
        help="also check references between the given objects (pools → profiles, policies → pools)",
    )


def _validate_run(args: argparse.Namespace) -> int:
    from modelfleet.api.validate import (
        ManifestError,
        check_references,
        expand_paths,
        validate_text,
    )

    try:
        files = expand_paths(args.paths)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems: list[object] = []
    objects = []
    for path in files:
        try:
            found, wrong = validate_text(path.read_text(), str(path))
        except (ManifestError, UnicodeDecodeError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            problems.append(exc)
            continue
        objects.extend(found)
        wrong.extend(_placement_problems(found))
        problems.extend(wrong)
        for p in wrong:
            print(p)
    if args.check_refs:
        for p in check_references(objects):
            problems.append(p)
            print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(objects)} object(s) in {len(files)} file(s)")
    return 0


def _placement_problems(objects: list[tuple[str, Any]]) -> list[Any]:
    """Plugin parameters of RoutingPolicies, checked against each plugin's schema."""
    from modelfleet.api.routingpolicy import RoutingPolicy
    from modelfleet.api.validate import Problem
    from modelfleet.policy.from_api import check_placement

    out = []
    for source, obj in objects:
        if isinstance(obj, RoutingPolicy):
            for field, message in check_placement(obj.spec.placement):
                out.append(
                    Problem(source, obj.KIND, obj.metadata.name, f"spec.placement.{field}", message)
                )
    return out


def _version_args(p: argparse.ArgumentParser) -> None:
    del p


def _version_run(args: argparse.Namespace) -> int:
    from modelfleet.api import API_VERSION

    print(f"modelfleet {__version__} (API {API_VERSION})")
    return 0


Handler = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _missing_extra(err: ModuleNotFoundError) -> str | None:
    """The missing third-party module behind ``err`` (None if it is modelfleet's own)."""
    name = (err.name or "").partition(".")[0]
    return None if not name or name == "modelfleet" else name


def _lazy(module: str, extra: str) -> Handler:
    """A subcommand implemented by ``module.add_arguments`` / ``module.run``.

    ``module`` and what it imports come from the ``extra`` of the package. Without it, the
    subcommand still exists (``modelfleet --help`` lists it) and running it says which extra
    to install, instead of a traceback; the other subcommands are unaffected.
    """
    missing: list[str] = []

    def add(p: argparse.ArgumentParser) -> None:
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as err:
            if (name := _missing_extra(err)) is None:
                raise
            missing.append(name)
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        try:
            if not missing:
                result: int = importlib.import_module(module).run(args)
                return result
        except ModuleNotFoundError as err:
            if (name := _missing_extra(err)) is None:
                raise
            missing.append(name)
        print(
            f"modelfleet {args.command}: needs the '{extra}' extra (missing Python module "
            f"{missing[0]!r}); install it with: pip install 'modelfleet[{extra}]'",
            file=sys.stderr,
        )
        return 2

    return add, run


def _subcommands() -> dict[str, tuple[str, Handler]]:
    return {
        "crds": ("write the CRDs generated from the API models", (_crds_args, _crds_run)),
        "validate": ("validate manifests offline", (_validate_args, _validate_run)),
        "version": ("print the version", (_version_args, _version_run)),
        "engine": (
            "run a simulated vLLM engine (OpenAI API)",
            _lazy("modelfleet.engine.cli", "engine"),
        ),
        "scheduler": (
            "run the OpenAI-compatible scheduler over a fleet (Ray Serve)",
            _lazy("modelfleet.scheduler.cli", "scheduler"),
        ),
        "up": (
            "start a local fleet (engine simulators + the scheduler) from manifests",
            _lazy("modelfleet.local.up", "local"),
        ),
        "top": (
            "live view of a running scheduler's pools, variants and instances",
            _lazy("modelfleet.local.top", "local"),
        ),
        "load": (
            "replay a trace against an OpenAI endpoint; summary table and latency CDF plots",
            _lazy("modelfleet.local.load", "local"),
        ),
        "simulate": (
            "policy benchmark: compare placement policies on a simulated fleet in virtual time",
            _lazy("modelfleet.sim.cli", "bench"),
        ),
        "operator": (
            "run the operator: ModelPools become vLLM Deployments (kopf)",
            _lazy("modelfleet.operator.cli", "operator"),
        ),
        "dev-cluster": (
            "a local Kubernetes control plane with simulated GPU nodes (up|down|kubeconfig)",
            _lazy("modelfleet.testing.cluster_cli", "testing"),
        ),
    }


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's arguments are built (and its module
    imported), so a command does not pay for importing every other one."""
    parser = argparse.ArgumentParser(
        prog="modelfleet",
        description="Kubernetes operator and cluster scheduler for multi-model LLM serving.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, (add, run)) in _subcommands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or command == name:
            add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in _subcommands() else None
    args = build_parser(command).parse_args(argv)
    code: int = args._run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
