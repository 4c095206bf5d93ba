# Settings shared by the local-cluster scripts (sourced, not run). Override any of them from the
# environment; `make cluster-status` prints the ones that matter.

# Everything expensive or stateful lives here, outside the checkout: binaries (keyed by version),
# certificates, etcd data, containerd's store, logs, image archives.
: "${FNSESSION_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/fnsession}"
CACHE=$FNSESSION_CACHE
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
KUBECONFIG_ADMIN=$PKI/admin.kubeconfig

NODE_NAME=$(hostname | tr 'A-Z' 'a-z')

export _t0=${_t0:-$(date +%s)}
log()  { printf '[%4ss] %s\n' "$(( $(date +%s) - _t0 ))" "$*"; }
step() { log "==> $*"; }
die()  { echo "error: $*" >&2; exit 1; }
node_ip() { ip -4 -o addr show dev "$(ip -4 route show default | awk '{print $5; exit}')" | awk '{print $4}' | cut -d/ -f1; }
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_k8s() { ctr --address "$SOCK" -n k8s.io "$@"; }
