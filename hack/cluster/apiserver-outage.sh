#!/usr/bin/env bash
# Kill the local cluster's kube-apiserver (SIGKILL) for SECONDS, then start it again exactly as up.sh
# started it (the same executable and arguments, read from the running process, logging to
# $LOGS/apiserver.log with the previous log kept as apiserver.log.1, its pid in $STATE/apiserver.pid),
# and wait until it answers /readyz, the kubelet has renewed its node Lease, the node is Ready and the
# controller-manager's informers work again.
#
# For outage tests (tests/integration/test_api_outage.py). The cluster is shared: run it under the
# team's lock, e.g.  flock /tmp/fnsession-cluster.lock hack/cluster/apiserver-outage.sh 20
# It also holds the cluster-up/down lock ($LOCK_FILE) while it runs, so it never races those.
#
# Output: "down <epoch s>", "started <epoch s>", "ready <epoch s>" (fractions of a second), then
# "settled <epoch s>" once the node and the controller-manager have caught up, one a line,
# so that a caller can time what it sees against the outage. Exit 0 only when the cluster is healthy.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"; . "$HERE/procs.sh"
secs=${1:-}
[[ "$secs" =~ ^[0-9]+$ ]] || die "usage: $0 SECONDS (how long the API server stays down, a whole number)"
[ "$(id -u)" = 0 ] || die "the local cluster runs as root; so must this"
take_lock
check_owner

pid=$(pid_of apiserver) || die "kube-apiserver is not running (make cluster-status)"
# the arguments exactly as up.sh gave them (NUL-separated in /proc), the executable from the pid file
mapfile -d '' argv < "/proc/$pid/cmdline"
[ "${#argv[@]}" -gt 1 ] || die "cannot read kube-apiserver's arguments from /proc/$pid/cmdline"
read -r _ exe < "$STATE/apiserver.pid"
now() { date +%s.%N | cut -c1-14; }

# killed (SIGKILL), as a crash or an OOM kill would: a graceful stop (SIGTERM) would also take the
# API server's address out of the kubernetes Service's endpoints, and after the return pods would then
# wait for kube-proxy to put it back, which is kube-proxy's recovery, not the one under test
kill -9 "$pid"
for _ in $(seq 100); do running_pid "$pid" || break; sleep 0.1; done
running_pid "$pid" && die "kube-apiserver (pid $pid) survived SIGKILL"
rm -f "$STATE/apiserver.pid"
echo "down $(now)"
sleep "$secs"
start apiserver "$exe" "${argv[@]:1}"
started_at=$(date -u +%Y-%m-%dT%H:%M:%S)
echo "started $(now)"
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for kube-apiserver 120 kc get --raw /readyz || die "kube-apiserver is not ready; see $LOGS/apiserver.log"
echo "ready $(now)"
# the kubelet's next heartbeat (its node Lease renewed after the start; every 10 s), then Ready: the
# Ready condition alone may still be the one from before the outage
heartbeat() {
  local renewed; renewed=$(kc -n kube-node-lease get lease "$NODE_NAME" -o jsonpath='{.spec.renewTime}' 2>/dev/null) || return 1
  [[ "${renewed%%.*}" > "$started_at" ]]
}
wait_for "the kubelet's heartbeat" 60 heartbeat || die "the kubelet did not renew its node Lease after the outage; see $LOGS/kubelet.log"
wait_for "node $NODE_NAME Ready" 120 node_ready || die "node $NODE_NAME is not Ready after the outage"
# the controller-manager's informers resume after their own watch back-off (up to 30 s, jittered):
# until then a new namespace gets no `default` ServiceAccount and no pod can be created in it. A
# probe namespace shows when they are back, so whatever runs next finds a working cluster.
probe=fnsession-outage-probe-$$
trap 'kc delete namespace "$probe" --wait=false >/dev/null 2>&1 || true' EXIT
kc create namespace "$probe" >/dev/null || die "could not create the probe namespace $probe"
has_sa() { kc -n "$probe" get serviceaccount default >/dev/null 2>&1; }
wait_for "the controller-manager (a new namespace's default ServiceAccount)" 120 has_sa \
  || die "the controller-manager did not catch up after the outage; see $LOGS/controller-manager.log"
echo "settled $(now)"
