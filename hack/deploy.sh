#!/usr/bin/env bash
# Apply crds/ and then manifests/ (a kustomization) to the cluster that $KUBECONFIG names; every path
# that installs fnsession (make deploy on the local cluster, make kind-up) goes through this script.
# Prints each object applied. UNDEPLOY=1 deletes them again, manifests first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
. "$HERE/cluster/env.sh"
: "${KUBECONFIG:?set KUBECONFIG to the cluster to deploy to}"
K=${KUBECTL:-$(command -v "$BIN/kubectl" || command -v kubectl)}
crds=$(find "$REPO/crds" -maxdepth 1 -name '*.yaml' | sort)
if [ "${UNDEPLOY:-0}" = 1 ]; then
  "$K" delete -k "$REPO/manifests" --ignore-not-found --wait=true
  [ -z "$crds" ] || "$K" delete --ignore-not-found -f "$REPO/crds"
  exit 0
fi
if [ -n "$crds" ]; then
  "$K" apply --server-side --force-conflicts -f "$REPO/crds"
  "$K" wait --for=condition=Established --timeout=60s -f "$REPO/crds" >/dev/null
fi
"$K" apply --server-side --force-conflicts -k "$REPO/manifests"
deployments=(fnsession-operator fnsession-gateway)
# The image keeps its tag (:dev) when rebuilt: roll the deployments when the image's inputs changed.
inputs=$(cat "$IMAGES/fnsession.inputs" 2>/dev/null || true)
for d in "${deployments[@]}"; do
  if [ -n "$inputs" ]; then
    "$K" -n fnsession-system patch deployment "$d" --type merge \
      -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"fnsession.dev/image-inputs\":\"${inputs:0:16}\"}}}}}" >/dev/null
  fi
  "$K" -n fnsession-system rollout status "deployment/$d" --timeout=120s
done
