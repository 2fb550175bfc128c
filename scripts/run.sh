#!/usr/bin/env bash
# Set up, then run the whole system on this machine: `modelfleet up` on examples/quickstart/
# (six simulated vLLM engines of three models on H100 and L40S timing, behind the real
# scheduler on a local Ray). Once it is ready, one streaming chat request goes through the
# OpenAI SDK as a self-check; then it prints the URL, a curl line and an SDK snippet, and
# serves until Ctrl-C.
#
#   bash scripts/run.sh [--once] [modelfleet up arguments...]
#
# --once: validate every example manifest, replay 30 s of the synthetic trace with
# `modelfleet load`, print its table, stop everything and exit (non-zero if the self-check,
# the validation or the load failed). CI runs this.
# The port is $MODELFLEET_PORT (default 8000; with --once, a free one when unset).
set -euo pipefail
started=$(date +%s.%N)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$here/scripts/setup.sh" local)"
cd "$here"
once=0
args=()
for a in "$@"; do
  if [ "$a" = "--once" ]; then once=1; else args+=("$a"); fi
done
if [ -z "${MODELFLEET_PORT:-}" ] && [ "$once" = 1 ]; then
  MODELFLEET_PORT=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
port="${MODELFLEET_PORT:-8000}"
url="http://127.0.0.1:$port/v1"

log="$(mktemp)"
"$venv/bin/modelfleet" up --port "$port" "${args[@]}" > >(trap '' INT; tee "$log") 2>&1 &
up=$!
stop() {
  trap - EXIT INT TERM
  kill -TERM "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  rm -f "$log"
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
until grep -q "^modelfleet up: ready" "$log"; do
  if ! kill -0 "$up" 2>/dev/null; then
    wait "$up" && code=0 || code=$?
    echo "run.sh: modelfleet up exited ($code) before it was ready" >&2
    exit 1
  fi
  sleep 0.2
done

snippet="from openai import OpenAI

client = OpenAI(base_url=\"$url\", api_key=\"unused\")
stream = client.chat.completions.create(
    model=\"chat\",
    messages=[{\"role\": \"user\", \"content\": \"Hello! Who are you?\"}],
    max_tokens=32,
    stream=True,
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)
print()"
curl_line="curl -sN $url/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 16, \"stream\": true}'"

# Self-check: the SDK snippet exactly as printed below, then the curl line.
answer="$("$venv/bin/python" -c "$snippet")"
echo "self-check: streamed a chat answer through the OpenAI SDK, $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}') s after run.sh started: ${answer:0:60}..."
bash -c "$curl_line" | grep -q '^data: \[DONE\]' || { echo "self-check: the curl line failed" >&2; exit 1; }

cat <<EOF

OpenAI base URL: $url   (models: chat, code)

  $curl_line

  # the OpenAI SDK (pip install openai):
$(sed 's/^/  /' <<<"$snippet")

Watch it: $venv/bin/modelfleet top --url ${url%/v1}
Load it:  $venv/bin/modelfleet load --url $url --duration 60
EOF

if [ "$once" = 1 ]; then
  # `modelfleet up` checked the quickstart before starting; CI also checks every other example.
  "$venv/bin/modelfleet" validate --check-refs examples/
  "$venv/bin/modelfleet" load --url "$url" --duration 30 --out modelfleet-load
  exit $?
fi
echo "Serving until Ctrl-C."
wait "$up"
