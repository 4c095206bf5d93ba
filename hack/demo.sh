#!/usr/bin/env bash
# The demo on the local cluster (make demo: images, deploy, then this): a Function whose instances
# take 2 sessions each, three sessions (the third starts a second instance), a request to a session's
# own pod, and carol's 10-second TTL running out.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
. "$HERE/cluster/env.sh"
# The demo talks to pod addresses from this host: only the local cluster's pods are reachable here.
[ "${FNSESSION_CLUSTER:-local}" = local ] || die "make demo runs on the local cluster (make cluster-up), not CLUSTER=${FNSESSION_CLUSTER}"
K=("$BIN/kubectl" --kubeconfig "${KUBECONFIG:-$KUBECONFIG_ADMIN}")
NS=fnsession-demo
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { say "$@"; "$@"; }
"${K[@]}" delete namespace $NS --ignore-not-found --wait=true >/dev/null
"${K[@]}" create namespace $NS >/dev/null

step "a Function (2 sessions per instance) and three sessions, from examples/"
show "${K[@]}" -n $NS apply -f "$REPO/examples/function-shared.yaml" -f "$REPO/examples/sessions.yaml"
show "${K[@]}" -n $NS wait --for=condition=Ready fsess/alice fsess/bob fsess/carol --timeout=90s
show "${K[@]}" -n $NS get fn,fsess,pods -o wide

step "alice and bob share one instance; carol, the third, got a new one; the gateway routes by header"
POD=$("${K[@]}" -n $NS get fsess alice -o jsonpath='{.status.instance.podName}')
GW=http://$("${K[@]}" -n fnsession-system get service fnsession-gateway -o jsonpath='{.spec.clusterIP}')
# a caller: a ServiceAccount that RBAC lets use sessions in this namespace, and a token for it
"${K[@]}" -n $NS create serviceaccount demo-client >/dev/null
"${K[@]}" -n $NS create role demo-client --verb=get,list,create,update,patch,delete \
  --resource=functionsessions.fnsession.dev >/dev/null
"${K[@]}" -n $NS create rolebinding demo-client --role=demo-client --serviceaccount=$NS:demo-client >/dev/null
TOKEN=$("${K[@]}" -n $NS create token demo-client)
say curl -s "$GW/fn/echo/hello" -H "'Authorization: Bearer \$TOKEN'" -H "'x-session-id: alice-1'"
curl -s --max-time 10 "$GW/fn/echo/hello" -H "Authorization: Bearer $TOKEN" -H 'x-session-id: alice-1'; echo
log "alice's request reached her instance, $POD"
say curl -s -i "$GW/fn/echo/hello" -H "'Authorization: Bearer \$TOKEN'"
curl -s -i --max-time 10 "$GW/fn/echo/hello" -H "Authorization: Bearer $TOKEN"
log "a request without a session id got a new session, named in the x-session-id response header"

step "carol's TTL is 10 seconds; waiting for it to expire"
show "${K[@]}" -n $NS wait --for=jsonpath='{.status.sessionStatus}'=Expired fsess/carol --timeout=30s
show "${K[@]}" -n $NS get fsess
show "${K[@]}" -n $NS describe fsess carol
log "demo done; its objects stay in namespace $NS (kubectl delete namespace $NS)"
