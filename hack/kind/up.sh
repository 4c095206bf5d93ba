#!/usr/bin/env bash
# The path for users with Docker and kind (kind cannot run on a machine without a Docker engine):
# create the kind cluster from hack/kind/cluster.yaml, load the project's images with `kind load`, and
# deploy crds/ and manifests/ with the same hack/deploy.sh that `make deploy` uses on the local cluster.
#   KIND_CLUSTER  cluster name (default fnsession)    KIND  the kind binary (default: kind on PATH)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/../cluster/env.sh"
: "${KIND:=kind}" "${KIND_CLUSTER:=fnsession}" "${KIND_KUBECONFIG:=$CACHE/kind.kubeconfig}"
command -v "$KIND" >/dev/null || die "kind is not installed: go install sigs.k8s.io/kind@v0.33.0 (needs Docker)"
if ! "$KIND" get clusters 2>/dev/null | grep -x "$KIND_CLUSTER" >/dev/null; then
  step "creating kind cluster $KIND_CLUSTER"
  "$KIND" create cluster --name "$KIND_CLUSTER" --config "$HERE/cluster.yaml" --wait 120s
fi
mkdir -p "$(dirname "$KIND_KUBECONFIG")"
"$KIND" get kubeconfig --name "$KIND_CLUSTER" > "$KIND_KUBECONFIG"
step "building and loading images into kind"
IMAGE_LOADER=kind KIND=$KIND KIND_CLUSTER=$KIND_CLUSTER "$REPO/hack/images/build-all.sh"
KUBECONFIG=$KIND_KUBECONFIG "$REPO/hack/deploy.sh"
echo "KUBECONFIG=$KIND_KUBECONFIG"
