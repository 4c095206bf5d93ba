#!/usr/bin/env bash
# Stop what up.sh started, by pid, in reverse order, and leave no process, mount, network namespace,
# bridge, iptables chain or rule behind; put back the kernel settings the kubelet changed.
# Works on a healthy cluster and on the remains of one that was killed. Keeps binaries, certificates,
# image archives and (unless RESET=1) etcd and containerd data.
#   RESET=1        also wipe etcd, kubelet and containerd state (imported images go too: `make images`)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"; . "$HERE/procs.sh"

# Let the kubelet tear pods down itself (CNI DEL frees IPs and NAT rules), then stop it.
if alive kubelet && alive apiserver && kc get --raw /readyz >/dev/null 2>&1; then
  log "deleting pods so that the kubelet releases their network"
  kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1
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
log "stopping scheduler, controller-manager, apiserver, containerd, etcd"
stop scheduler; stop controller-manager; stop apiserver; stop containerd; stop etcd
# Whatever is still running from our binaries or our containerd (a killed run, a lost pid file):
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK_DIR/" 2>/dev/null) \
         $(pgrep -f "^$BIN/" 2>/dev/null) $(pgrep -f "^containerd --config $CFG/" 2>/dev/null); do
  kill -9 "$p" 2>/dev/null
done
# Container processes whose shim is gone live on in their cgroups; the pause and workload processes
# of our pods are in kubepods cgroups.
for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
         /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
  [ -f "$f" ] && while read -r p; do kill -9 "$p" 2>/dev/null; done < "$f"
done
# The kubelet's (now empty) kubepods cgroups, deepest first.
find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null
grep -E " ($STATE|$SOCK_DIR|/run/netns/cni-)" /proc/self/mountinfo | awk '{print $5}' | sort -r |
  while read -r m; do umount -l "$m" 2>/dev/null; done
for n in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$n" 2>/dev/null; done
ip link del cni0 2>/dev/null
# Chains the kubelet, kube-proxy and the CNI bridge plugin made (KUBE-*, CNI-*): unhook, flush, delete.
for t in filter nat mangle; do
  iptables -t $t -S 2>/dev/null | grep -E '^-A .* -j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' | sed 's/^-A/-D/' |
    while read -r r; do eval iptables -t $t "$r" 2>/dev/null; done
  for c in $(iptables -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do iptables -t $t -F "$c" 2>/dev/null; done
  for c in $(iptables -t $t -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do iptables -t $t -X "$c" 2>/dev/null; done
done
for chain in OUTPUT FORWARD; do for cidr in $SVC_CIDR $KWOK_CIDR; do
  while iptables -D $chain -d $cidr -m comment --comment $GUARD_COMMENT -j REJECT 2>/dev/null; do :; done; done; done
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
log "cluster down"
