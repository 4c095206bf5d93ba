# shellcheck shell=bash disable=SC2034  # sourced by the local-cluster scripts, which use the variables set here
# Settings shared by the local-cluster scripts (sourced, not run). Override any of them from the
# environment; `make cluster-status` prints the ones that matter.

# Everything expensive or stateful lives here, outside the checkout: binaries (keyed by version),
# certificates, etcd data, containerd's store, logs, image archives.
: "${FNSESSION_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/fnsession}"
# Resolved: the kernel reports mounts by real path, and teardown matches mounts against these paths.
CACHE=$(realpath -m "$FNSESSION_CACHE")
BIN=$CACHE/bin; PKI=$CACHE/pki; STATE=$CACHE/state; LOGS=$CACHE/logs; CFG=$CACHE/config; IMAGES=$CACHE/images

# Pinned versions. 1.35 is the last Kubernetes minor that supports containerd 1.x (Debian 12 ships 1.6).
: "${K8S_VERSION:=v1.35.8}"
: "${ETCD_VERSION:=v3.6.14}"
: "${KWOK_VERSION:=v0.8.0}"
# Go for the builds: the one on PATH when it is recent enough, else this toolchain, fetched once from
# the Go module proxy (golang.org/toolchain) by install-deps.sh into the cache.
: "${GO_TOOLCHAIN_VERSION:=1.25.14}"
GO_MIN_MINOR=25
[ -x "$CACHE/go-$GO_TOOLCHAIN_VERSION/bin/go" ] && PATH=$CACHE/go-$GO_TOOLCHAIN_VERSION/bin:$PATH
ALL_BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy etcd etcdctl kwok"

# Addresses. Pods on the cni0 bridge, Services from kube-proxy, fake IPs for kwok pods (never dialled).
POD_CIDR=10.88.0.0/16; SVC_CIDR=10.96.0.0/24; KWOK_CIDR=10.244.0.0/16
SOCK_DIR=/run/fnsession-containerd; SOCK=$SOCK_DIR/containerd.sock   # unix socket paths must stay short
GUARD_COMMENT=fnsession-local-guard
# One local cluster per machine: sockets, ports, cni0 and iptables are machine-wide. The owner file
# names the cache of the cluster that holds them; the lock serialises cluster-up and cluster-down.
OWNER_FILE=/run/fnsession-cluster.owner
LOCK_FILE=/run/lock/fnsession-cluster.lock
KUBECONFIG_ADMIN=$PKI/admin.kubeconfig

NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')

export _t0=${_t0:-$(date +%s)}
log()  { printf '[%4ss] %s\n' "$(( $(date +%s) - _t0 ))" "$*"; }
step() { log "==> $*"; }
die()  { echo "error: $*" >&2; exit 1; }
node_ip() { ip -4 -o addr show dev "$(ip -4 route show default | awk '{print $5; exit}')" | awk '{print $4; exit}' | cut -d/ -f1; }
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=10s "$@"; }

# The guard rules, one per line as iptables arguments after the chain: traffic to a ClusterIP that
# kube-proxy did not translate, to a kwok pod's fake IP, or to a pod address when cni0 is gone, must
# never leave the machine (this kernel has no dummy netdev, so it would follow the default route).
# They sit after kube-proxy's DNAT, so real Services still work.
guard_rules() {
  for chain in OUTPUT FORWARD; do
    echo "$chain -d $SVC_CIDR -m comment --comment $GUARD_COMMENT -j REJECT"
    echo "$chain -d $KWOK_CIDR -m comment --comment $GUARD_COMMENT -j REJECT"
  done
  # pod addresses while cni0 is absent; Service traffic that kube-proxy rewrote (DNAT) to a pod is
  # left alone: in OUTPUT its out interface is not yet the final one, and a Service with endpoints
  # means cni0 exists
  echo "OUTPUT -d $POD_CIDR ! -o cni0 -m conntrack ! --ctstate DNAT -m comment --comment $GUARD_COMMENT -j REJECT"
  echo "FORWARD -d $POD_CIDR ! -o cni0 -m comment --comment $GUARD_COMMENT -j REJECT"
}

# Kernel settings the kubelet changes; up.sh records them, down.sh restores them.
KERNEL_SETTINGS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward fs.inotify.max_user_instances"

# take_lock: hold the machine-wide cluster lock for the rest of this script (children inherit it)
take_lock() {
  [ "${FNSESSION_CLUSTER_LOCKED:-}" = 1 ] && return 0
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  flock -w 600 9 || die "another cluster-up or cluster-down holds $LOCK_FILE"
  export FNSESSION_CLUSTER_LOCKED=1
}

# check_owner: refuse to touch a local cluster that another cache started and that still runs
check_owner() {
  local owner; owner=$(cat "$OWNER_FILE" 2>/dev/null) || return 0
  [ -z "$owner" ] || [ "$owner" = "$CACHE" ] && return 0
  if [ -f "$owner/state/etcd.pid" ] && [ -d "/proc/$(awk '{print $1}' "$owner/state/etcd.pid")" ]; then
    die "a local cluster from another cache ($owner) is running on this machine; stop it first: FNSESSION_CACHE=$owner make cluster-down"
  fi
}
ctr_k8s() { ctr --address "$SOCK" -n k8s.io "$@"; }
