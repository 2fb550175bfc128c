#!/usr/bin/env bash
# Build (or reuse) the test control plane: one `controlplane` binary (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl), plus kwok and helm, into a cache outside
# the checkout.
#
#   build.sh            build if missing; print the bin directory on stdout (last line)
#   build.sh --check    print the bin directory; exit 0 if it is complete, 3 if not built
#   build.sh --key      print the cache key only
#
# Cache: ${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/controlplane/<key>/bin, where <key> names the
# pinned versions (versions.env) plus a hash of go.mod, go.sum and main.go, so a version bump or
# a code change builds into a fresh directory and an unchanged tree reuses the old one.
# Idempotent and safe to run concurrently: builds are serialised by a lock and published by an
# atomic rename, so a reader never sees a half-written bin directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"

src_hash=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/versions.env" | sha256sum | cut -c1-12)
key="k8s-${K8S_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${src_hash}"
cache_root="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/controlplane"
dest="$cache_root/$key"
bin="$dest/bin"
tools=(controlplane etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

complete() {
	[ -f "$dest/COMPLETE" ] || return 1
	for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
	[ -s "$dest/share/kwok-stages.yaml" ]
}

case "${1:-}" in
--key) echo "$key"; exit 0 ;;
--check) echo "$bin"; complete && exit 0 || exit 3 ;;
"") ;;
*) echo "build.sh: unknown argument '$1' (expected --check, --key or nothing)" >&2; exit 2 ;;
esac

log() { echo "build.sh: $*" >&2; }
if complete; then
	log "reusing $dest"
	echo "$bin"
	exit 0
fi

command -v go >/dev/null || { log "go is not on PATH; install Go >= 1.25 (https://go.dev/dl/)"; exit 1; }
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$key"
log "waiting for the build lock ($cache_root/.lock-$key)"
flock 9
if complete; then # another process built it while we waited
	log "reusing $dest"
	echo "$bin"
	exit 0
fi

tmp=$(mktemp -d "$cache_root/.tmp-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/share"
start=$(date +%s)
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log "building controlplane (Kubernetes ${K8S_VERSION}; 12-25 min cold on 2 cores, seconds warm)"
(cd "$here" && GOFLAGS=-mod=readonly go build -ldflags "$ldflags" -o "$tmp/bin/controlplane" .)
for t in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	ln -s controlplane "$tmp/bin/$t"
done

# kwok and helm are installed from their own modules (their go.mod needs no replace lines).
# Run from a neutral directory so our go.mod does not interfere.
log "installing kwok ${KWOK_VERSION} and helm ${HELM_VERSION}"
(cd "$tmp" && GOFLAGS= GOBIN="$tmp/bin" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}")
(cd "$tmp" && GOFLAGS= GOBIN="$tmp/bin" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")

# kwok does nothing without Stage objects. Its module ships the upstream "fast" stages; take
# them from the module cache at the pinned version rather than keeping a copy in this repo.
kwok_dir=$(cd "$tmp" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -d "$kwok_dir/kustomize/stage" ] || { log "kwok module at $kwok_dir has no kustomize/stage"; exit 1; }
for f in "$kwok_dir"/kustomize/stage/node/fast/node-initialize.yaml \
	"$kwok_dir"/kustomize/stage/node/heartbeat/node-heartbeat.yaml \
	"$kwok_dir"/kustomize/stage/pod/fast/*.yaml; do
	[ -f "$f" ] || { log "missing kwok stage file $f"; exit 1; }
	printf -- '---\n' >>"$tmp/share/kwok-stages.yaml"
	grep -v '^---$' "$f" >>"$tmp/share/kwok-stages.yaml"
done

"$tmp/bin/kubectl" version --client >/dev/null
cat >"$tmp/COMPLETE" <<INFO
key=$key
k8s=${K8S_VERSION}
kwok=${KWOK_VERSION}
helm=${HELM_VERSION}
go=$(go env GOVERSION)
build_seconds=$(($(date +%s) - start))
INFO
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "built in $(($(date +%s) - start)) s: $bin"
echo "$bin"
