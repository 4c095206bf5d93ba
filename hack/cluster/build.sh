#!/usr/bin/env bash
# Build the local cluster's binaries from Go modules at pinned versions: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl, kube-proxy, etcd, etcdctl and kwok.
#
# They land in $FNSESSION_CACHE/bin (default ~/.cache/fnsession/bin), outside the checkout, with a stamp
# file naming the versions; a run with the same versions and every binary present does nothing. About
# 7 minutes cold on 2 cores, about 1 minute with a warm Go build cache.
#
# Why from source: this machine reaches the Go module proxy but no release download site or registry.
# Kubernetes 1.35 is the last minor that supports containerd 1.x, which is what Debian 12 ships.
set -euo pipefail
. "$(dirname "$0")/env.sh"
mkdir -p "$BIN" "$CACHE/build"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
stamp=$BIN/.versions; want="$K8S_VERSION $ETCD_VERSION $KWOK_VERSION"
all_present() { for b in $ALL_BINARIES; do [ -x "$BIN/$b" ] || return 1; done; [ -d "$CACHE/kwok-stages/pod" ]; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && all_present; then
  log "binaries cached in $BIN ($want)"; exit 0
fi
rm -f "$stamp"
command -v go >/dev/null || die "go is not installed (https://go.dev/dl/); the cluster binaries are built from Go modules"

# Kubernetes: a throwaway module that requires k8s.io/kubernetes and replaces every staging module
# (k8s.io/api, k8s.io/client-go, ...) with its published v0.X.Y tag, read from the real go.mod.
W=$CACHE/build/k8s; mkdir -p "$W"; cd "$W"
printf 'module local/k8sbuild\n\ngo 1.25.0\n' > go.mod
step "resolving Kubernetes $K8S_VERSION modules (first time: a few hundred MB from the Go module proxy)"
KGOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
{ echo "module local/k8sbuild"; echo; grep -E '^go [0-9]' "$KGOMOD"; grep -E '^godebug ' "$KGOMOD" || true; } > go.mod
STAGING="v0.${K8S_VERSION#v1.}"
while read -r m; do
  go mod edit -replace="$m=$m@$STAGING"
done < <(sed -n 's|^[[:space:]]*\(k8s.io/[^[:space:]]*\) => \./staging/src/.*|\1|p' "$KGOMOD")
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy"
{ echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
  for c in $CMDS; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done; echo ')'; } > tools.go
go mod tidy
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2); LDF="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do   # without these, versions read v0.0.0-master
  LDF="$LDF -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
done
for c in $CMDS; do step "building $c $K8S_VERSION"; go build -trimpath -ldflags "$LDF" -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c"; done

# etcd: its own go.mod has replace directives, so `go install` fails; a consumer module works.
W=$CACHE/build/etcd; mkdir -p "$W"; cd "$W"
printf 'module local/etcdbuild\n\ngo 1.25.0\n' > go.mod
printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n\t_ "go.etcd.io/etcd/server/v3"\n)\n' > tools.go
step "building etcd $ETCD_VERSION"
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION"; go mod tidy
go build -trimpath -o "$BIN/etcd" go.etcd.io/etcd/server/v3
go build -trimpath -o "$BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3

step "building kwok $KWOK_VERSION"
GOBIN=$BIN go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
rm -rf "$CACHE/kwok-stages"   # copied, not linked: a `go clean -modcache` must not break the cluster
cp -r "$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage" "$CACHE/kwok-stages"
chmod -R u+w "$CACHE/kwok-stages"
echo "$want" > "$stamp"
log "built: $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -1)"
