#!/usr/bin/env bash
# Build helm from its Go module at a pinned version into $FNSESSION_CACHE/bin/helm-<version> (with a
# helm link to it), the way hack/cluster/build.sh builds Kubernetes: this machine reaches the Go module
# proxy but no release download site. A run with that version present does nothing. About 3 minutes
# cold on 2 cores. Prints the binary's path last.
set -euo pipefail
. "$(dirname "$0")/../cluster/env.sh"
: "${HELM_VERSION:=v4.3.2}"
HELM_MODULE=helm.sh/helm/v${HELM_VERSION:1:1}
out=$BIN/helm-$HELM_VERSION
if [ ! -x "$out" ]; then
  command -v go >/dev/null || die "go is not installed; helm is built from its Go module ($HELM_MODULE@$HELM_VERSION)"
  mkdir -p "$BIN"
  step "building helm $HELM_VERSION from $HELM_MODULE (Go module proxy)"
  # helm's go.mod has no replace directives, so `go install module@version` builds it as released
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN=$tmp \
    go install -trimpath -ldflags "-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION" \
    "$HELM_MODULE/cmd/helm@$HELM_VERSION" \
    || die "building helm $HELM_VERSION failed (it needs the Go its go.mod names; have $(go env GOVERSION))"
  mv "$tmp/helm" "$out"
fi
ln -sfn "helm-$HELM_VERSION" "$BIN/helm"
log "$("$BIN/helm" version --short 2>/dev/null || echo "helm $HELM_VERSION")"
echo "$BIN/helm"
