#!/usr/bin/env bash
# The demo on the local cluster (make demo: the cluster up when it is down, images, deploy, then this):
#   1. a Function whose instances take 2 sessions each, three sessions (the third starts a second
#      instance), requests routed by the gateway by header, and carol's 10-second TTL running out;
#   2. tenant storage: two SESSION_EXCLUSIVE sessions, each running as its own uid/gid on one shared
#      volume, each writing a file; what each can see, the files on the host's disk, and a third pod
#      with the whole volume mounted as tenant b's uid refused tenant a's file.
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

step "tenant storage: one volume, two tenants, each session's pod running as its tenant's uid/gid"
# the shared volume: a directory on this host, as a local PersistentVolume bound to the claim shared-data
VOL=$CACHE/state/demo-volume; PV=fnsession-demo-shared-data
"${K[@]}" delete persistentvolume $PV --ignore-not-found --wait=true >/dev/null
"${K[@]}" delete storageclass $PV --ignore-not-found >/dev/null
rm -rf "$VOL"; mkdir -p "$VOL"; chmod 0755 "$VOL"
cat <<YAML | "${K[@]}" apply -f - >/dev/null
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $PV}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $PV}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: $PV
  persistentVolumeReclaimPolicy: Retain
  local: {path: $VOL}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared-data, namespace: $NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: $PV
  resources: {requests: {storage: 1Gi}}
YAML
log "claim shared-data: a local volume at $VOL on this host"
show "${K[@]}" -n $NS apply -f "$REPO/examples/tenant-storage.yaml"
show "${K[@]}" -n $NS wait --for=condition=Ready fsess/tenant-a fsess/tenant-b --timeout=90s
show "${K[@]}" -n $NS get fsess tenant-a tenant-b
for t in a b; do
  ip=$("${K[@]}" -n $NS get fsess tenant-$t -o jsonpath='{.status.instance.podIP}')
  say curl -s -X PUT "http://<tenant-$t's pod>:9000/file?path=/data/notes.txt" --data "'notes of tenant $t'"
  curl -s --max-time 10 -X PUT "http://$ip:9000/file?path=/data/notes.txt" --data "notes of tenant $t"; echo
done
log "each tenant wrote /data/notes.txt, as its own uid/gid (above); each sees only its own directory at /data:"
for t in a b; do
  ip=$("${K[@]}" -n $NS get fsess tenant-$t -o jsonpath='{.status.instance.podIP}')
  say curl -s "http://<tenant-$t's pod>:9000/file?path=/data/notes.txt"
  curl -s --max-time 10 "http://$ip:9000/file?path=/data/notes.txt"; echo
done
show ls -ln "$VOL/tenants" "$VOL/tenants/a" "$VOL/tenants/b"
log "on the host: tenants/a is uid/gid 1001 and tenants/b 1002, both mode 0700"
# a pod with the WHOLE volume mounted, running as tenant b's uid: b's files yes, a's no
sed -e 's/^  name: sample-function$/  name: snoop-as-tenant-b/' "$REPO/examples/sample-function.yaml" \
  | "${K[@]}" -n $NS apply -f - --dry-run=client -o json \
  | python3 -c '
import json, sys
pod = json.load(sys.stdin)
pod["spec"]["securityContext"] = {"runAsUser": 1002, "runAsGroup": 1002}
pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "shared-data"}}]
pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/vol"}]
json.dump(pod, sys.stdout)' | "${K[@]}" -n $NS apply -f - >/dev/null
"${K[@]}" -n $NS wait --for=condition=Ready pod/snoop-as-tenant-b --timeout=60s >/dev/null
ip=$("${K[@]}" -n $NS get pod snoop-as-tenant-b -o jsonpath='{.status.podIP}')
log "a pod with the whole volume at /vol, running as uid 1002 (tenant b):"
say curl -s "http://<snoop pod>:9000/file?path=/vol/tenants/b/notes.txt"
curl -s --max-time 10 "http://$ip:9000/file?path=/vol/tenants/b/notes.txt"; echo
say curl -s "http://<snoop pod>:9000/file?path=/vol/tenants/a/notes.txt"
curl -s --max-time 10 "http://$ip:9000/file?path=/vol/tenants/a/notes.txt"; echo
log "tenant b's uid reads its own notes and is refused tenant a's"
log "demo done; its objects stay in namespace $NS (kubectl delete namespace $NS; kubectl delete pv,storageclass $PV)"
