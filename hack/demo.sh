#!/usr/bin/env bash
# The demo on the local cluster: the sample function from examples/ runs as a real pod, and the host
# talks to it directly (a plain request, a slow one, a stream of Server-Sent Events).
# Function and FunctionSession objects join this demo when the operator lands.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
. "$HERE/cluster/env.sh"
# The demo talks to the pod's address from this host: only the local cluster's pods are reachable here.
[ "${FNSESSION_CLUSTER:-local}" = local ] || die "make demo runs on the local cluster (make cluster-up), not CLUSTER=${FNSESSION_CLUSTER}"
K=("$BIN/kubectl" --kubeconfig "${KUBECONFIG:-$KUBECONFIG_ADMIN}")
NS=fnsession-demo
"${K[@]}" create namespace $NS --dry-run=client -o yaml | "${K[@]}" apply -f - >/dev/null
"${K[@]}" -n $NS delete pod sample-function --ignore-not-found --wait=true >/dev/null
step "kubectl apply -n $NS -f examples/sample-function.yaml"
"${K[@]}" -n $NS apply -f "$REPO/examples/sample-function.yaml"
"${K[@]}" -n $NS wait --for=condition=Ready pod/sample-function --timeout=90s
IP=$("${K[@]}" -n $NS get pod sample-function -o jsonpath='{.status.podIP}')
"${K[@]}" -n $NS get pod sample-function -o wide
step "curl http://$IP:9000/hello -H 'X-Fc-Session-Id: demo-1'"
curl -s --max-time 5 "http://$IP:9000/hello" -H 'X-Fc-Session-Id: demo-1'; echo
step "curl http://$IP:9000/slow?ms=500"
curl -s --max-time 5 -w '  (%{time_total}s)\n' "http://$IP:9000/slow?ms=500"
step "curl -N 'http://$IP:9000/sse?n=3&ms=300'  (events arrive one by one)"
curl -sN --max-time 5 "http://$IP:9000/sse?n=3&ms=300"
log "demo done; clean up with: KUBECONFIG=$KUBECONFIG_ADMIN kubectl delete namespace $NS"
