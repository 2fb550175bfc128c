#!/usr/bin/env bash
# Build (or reuse) a bench-only venv with inference-perf, the independent load client that
# bench/load_client_check.py drives. Never part of the product's dependencies.
#
#   bench/inference_perf_env.sh          build if missing; print the venv directory (last line)
#   bench/inference_perf_env.sh --check  print it; exit 0 if complete, 3 if not built
#
# inference-perf needs Python >= 3.12 (every release declares it); this machine's python3 is
# 3.11, so the script takes python3.12 from PATH, else from pyenv (3.12.x). Cache:
# ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/bench/inference-perf-<version>/venv, published
# by a COMPLETE marker written last. ~0.8 GB, about a minute with a warm pip cache.
set -euo pipefail
VERSION=0.7.0
root="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/bench/inference-perf-$VERSION"
venv="$root/venv"
complete() { [ -f "$root/COMPLETE" ] && [ -x "$venv/bin/inference-perf" ]; }
case "${1:-}" in
--check) echo "$venv"; complete && exit 0 || exit 3 ;;
"") ;;
*) echo "inference_perf_env.sh: unknown argument '$1' (expected --check or nothing)" >&2; exit 2 ;;
esac
if complete; then echo "$venv"; exit 0; fi
# A pyenv shim on PATH may exist and still refuse to run, so every candidate is tried.
python=""
for p in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
	"${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12; do
	if [ -n "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
		python="$p"
		break
	fi
done
if [ -z "$python" ]; then
	echo "inference_perf_env.sh: inference-perf $VERSION needs Python 3.12; none found on PATH" \
		"or in pyenv (set PYTHON312=/path/to/python3.12)" >&2
	exit 1
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if complete; then echo "$venv"; exit 0; fi
rm -rf "$venv" "$root/COMPLETE"
start=$(date +%s)
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet "inference-perf==$VERSION" >&2
echo "inference-perf $VERSION with $("$python" --version) in $(($(date +%s) - start)) s" >"$root/COMPLETE"
echo "$venv"
