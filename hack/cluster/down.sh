#!/usr/bin/env bash
# Stop what up.sh started, by pid, and leave no process, mount, network namespace, bridge, iptables
# or ip6tables chain or rule behind; put back the kernel settings the kubelet changed.
# Works on a healthy cluster and on the remains of one that was killed. Keeps binaries, certificates,
# image archives and (unless RESET=1) etcd and containerd data. Refuses to touch a cluster that was
# started from another cache and still runs (the machine-wide parts are shared).
#   RESET=1        also wipe etcd, kubelet and containerd state (imported images go too: `make images`)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"; . "$HERE/procs.sh"
take_lock
check_owner

# Let the kubelet tear pods down itself (CNI DEL frees addresses and NAT rules). Controllers go first,
# or ReplicaSets would put the pods straight back; the deletion is graceful, so a pod object goes
# away only once the kubelet has stopped its sandbox.
stop controller-manager; stop scheduler
if alive kubelet && alive apiserver && kc get --raw /readyz >/dev/null 2>&1; then
  log "deleting pods so that the kubelet releases their network"
  kc delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
  for _ in $(seq 60); do
    [ -z "$(kc get pods -A --field-selector spec.nodeName="$NODE_NAME" -o name 2>/dev/null)" ] && break; sleep 0.5
  done
fi
log "stopping kwok, kube-proxy, kubelet"
stop kwok; stop kube-proxy; stop kubelet
[ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
if alive containerd; then
  for t in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$t" 2>/dev/null; done; sleep 1
  for t in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers rm "$c" >/dev/null 2>&1; done
fi
log "stopping apiserver, containerd, etcd"
stop apiserver; stop containerd; stop etcd
# Whatever still runs from our binaries or our containerd (a killed run, a lost pid file):
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK_DIR/" 2>/dev/null) \
         $(pgrep -f "^$BIN/" 2>/dev/null) $(pgrep -f "^containerd --config $CFG/" 2>/dev/null); do
  kill -9 "$p" 2>/dev/null
done
# Container processes whose shim is gone live on in the kubelet's kubepods cgroups (cgroup v1: one
# per controller; v2: one tree). Kill them, wait until each cgroup is empty, remove the cgroups.
kubepods=$(find /sys/fs/cgroup -maxdepth 2 -name kubepods -type d 2>/dev/null)
if [ -n "$kubepods" ]; then
  for _ in $(seq 50); do
    # shellcheck disable=SC2086
    procs=$(find $kubepods -name cgroup.procs -exec cat {} + 2>/dev/null)
    [ -z "$procs" ] && break
    for p in $procs; do kill -9 "$p" 2>/dev/null; done; sleep 0.1
  done
  # shellcheck disable=SC2086
  find $kubepods -depth -type d -exec rmdir {} + 2>/dev/null
fi
# Mounts under our state and socket directories and the pods' network namespaces (mount point = field 5).
awk -v s="$STATE/" -v r="$SOCK_DIR" 'index($5, s) == 1 || index($5, r) == 1 || index($5, "/run/netns/cni-") == 1 {print $5}' \
  /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
for n in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$n" 2>/dev/null; done
ip link del cni0 2>/dev/null
# Chains the kubelet, kube-proxy and the CNI plugins made (KUBE-*, CNI-*), IPv4 and IPv6: unhook, flush, delete.
for ipt in iptables ip6tables; do
  command -v $ipt >/dev/null || continue
  for t in filter nat mangle; do
    $ipt -t $t -S 2>/dev/null | grep -E '^-A .* -j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' | sed 's/^-A/-D/' |
      while read -r r; do eval $ipt -t $t "$r" 2>/dev/null; done
    for c in $($ipt -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do $ipt -t $t -F "$c" 2>/dev/null; done
    for c in $($ipt -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do $ipt -t $t -X "$c" 2>/dev/null; done
  done
done
# Every guard rule, whatever its exact form (an older version of up.sh may have added it).
for chain in OUTPUT FORWARD; do
  iptables -S "$chain" 2>/dev/null | grep -- "--comment $GUARD_COMMENT" | sed 's/^-A/-D/' |
    while read -r r; do eval iptables "$r" 2>/dev/null; done
done
# Pods are gone, so are their address leases.
rm -rf "$STATE/cni-ipam"
if [ -f "$STATE/sysctl.before" ]; then
  sysctl -q -p "$STATE/sysctl.before" && rm -f "$STATE/sysctl.before"
fi
if [ "${RESET:-0}" = 1 ]; then
  log "RESET=1: wiping etcd, kubelet and containerd state"
  rm -rf "$STATE/etcd" "$STATE/etcd.broken" "$STATE/kubelet" "$STATE/kubelet-pki" "$STATE/containerd"
fi
rm -rf "$SOCK_DIR"
rm -f "$OWNER_FILE"
log "cluster down"
