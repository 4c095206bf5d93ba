#!/usr/bin/env bash
# Bring up a real single-node Kubernetes as plain processes: etcd, kube-apiserver, controller-manager,
# scheduler, containerd (Debian's, CRI on, its own socket) with runc and the CNI bridge, kubelet and
# kube-proxy; with KWOK_NODES=N also kwok and N tainted fake nodes for control-plane scale tests.
#
# Idempotent: when everything already runs and the node is Ready it only adds missing kwok nodes (and
# deletes kwok nodes that no running kwok manages, left by an earlier run with KWOK_NODES). When
# an earlier cluster was killed without `make cluster-down` (stale pid files, mounts, cni0, iptables
# chains, a half-written etcd), it cleans that up first and starts again.
#
# Usage: [KWOK_NODES=N] up.sh      then: KUBECONFIG=$FNSESSION_CACHE/pki/admin.kubeconfig kubectl ...
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"; . "$HERE/procs.sh"
KWOK_NODES=${KWOK_NODES:-0}
[ "$(id -u)" = 0 ] || die "the local cluster runs a kubelet and containerd, which need root"
take_lock
check_owner

"$HERE/../install-deps.sh"
"$HERE/build.sh"

running() { for c in $COMPONENTS; do alive "$c" || return 1; done; }
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
add_guards() {
  guard_rules | while read -r chain rule; do
    # shellcheck disable=SC2086
    iptables -C "$chain" $rule 2>/dev/null || iptables -I "$chain" 1 $rule
  done
}

add_kwok_nodes() {
  [ "$KWOK_NODES" -gt 0 ] || return 0
  if ! alive kwok; then
    step "starting kwok for $KWOK_NODES fake node(s)"
    start kwok "$BIN/kwok" --kubeconfig="$KUBECONFIG_ADMIN" \
      -c "$CACHE/kwok-stages/node/fast/node-initialize.yaml" \
      -c "$CACHE/kwok-stages/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
      -c "$CACHE/kwok-stages/pod/fast/pod-ready.yaml" -c "$CACHE/kwok-stages/pod/fast/pod-complete.yaml" \
      -c "$CACHE/kwok-stages/pod/fast/pod-delete.yaml" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --cidr=$KWOK_CIDR --node-ip=10.244.0.1 --node-lease-duration-seconds=40 --server-address=127.0.0.1:10247
  fi
  for i in $(seq 0 $((KWOK_NODES - 1))); do cat <<YAML | kc apply -f - >/dev/null
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/arch: amd64, kubernetes.io/os: linux, kubernetes.io/hostname: kwok-node-$i, type: kwok}
spec:
  taints: [{effect: NoSchedule, key: kwok.x-k8s.io/node, value: fake}]
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
YAML
  done
  kc wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null
  log "kwok nodes Ready: $(kc get nodes -l type=kwok -o name | wc -l)"
}
# kwok Nodes that no running kwok manages (left in etcd by a run with KWOK_NODES=N, now started
# without) would stay NotReady forever: delete them, and the pods bound to them with them
remove_stale_kwok_nodes() {
  alive kwok && return 0
  local stale; stale=$(kc get nodes -l type=kwok -o name 2>/dev/null) || return 0
  [ -n "$stale" ] || return 0
  step "deleting kwok nodes no kwok runs for: $(echo "$stale" | sed 's|node/||' | tr '\n' ' ')"
  kc delete nodes -l type=kwok --wait=false >/dev/null
}

# Every process of ours runs: the cluster is up or still starting; give it time before repairing.
if running && wait_for "node $NODE_NAME Ready" 60 node_ready; then
  add_guards
  log "cluster already up (node $NODE_NAME Ready)"
  add_kwok_nodes
  remove_stale_kwok_nodes
  echo "KUBECONFIG=$KUBECONFIG_ADMIN"
  exit 0
fi

# Anything half-up or left over by a killed run goes first: down.sh only touches what is ours.
if ls "$STATE"/*.pid >/dev/null 2>&1 || ip link show cni0 >/dev/null 2>&1 || [ -S "$SOCK" ]; then
  step "cleaning up a previous cluster that is not healthy"
  "$HERE/down.sh" | sed 's/^/    /'
fi
echo "$CACHE" > "$OWNER_FILE"
mkdir -p "$STATE" "$LOGS" "$CFG/cni" "$PKI" "$IMAGES"
NODE_IP=$(node_ip); [ -n "$NODE_IP" ] || die "no IPv4 address on the default route's interface"

# --- PKI: one CA, a cert per component, identities as in hack/local-up-cluster.sh ---
if [ ! -f "$PKI/admin.kubeconfig" ] || [ "$(cat "$PKI/node" 2>/dev/null)" != "$NODE_NAME $NODE_IP" ]; then
  step "creating certificates in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"
  (
  cd "$PKI"
  openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -nodes -key ca.key -subj "/CN=fnsession-local-ca" -days 3650 -out ca.crt
  cert() { # name CN [O] [SANs]
    openssl genrsa -out "$1.key" 2048 2>/dev/null
    openssl req -new -key "$1.key" -subj "/CN=$2${3:+/O=$3}" -out "$1.csr"
    { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"; [ -n "${4:-}" ] && echo "subjectAltName=$4"; } > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"; }
  cert apiserver kube-apiserver "" "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP"
  cert admin admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  cert kubelet "system:node:$NODE_NAME" system:nodes
  openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  for n in admin controller-manager scheduler kube-proxy kubelet; do cat > "$n.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: fnsession-local, cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: $(base64 -w0 ca.crt)}}]
users: [{name: $n, user: {client-certificate-data: $(base64 -w0 "$n.crt"), client-key-data: $(base64 -w0 "$n.key")}}]
contexts: [{name: fnsession-local, context: {cluster: fnsession-local, user: $n}}]
current-context: fnsession-local
KC
  done
  chmod 600 ./*.key ./*.kubeconfig
  echo "$NODE_NAME $NODE_IP" > node
  )
fi

# --- configuration files ---
cat > "$CFG/cni/10-bridge.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "fnsession-bridge", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "promiscMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni-ipam", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
cat > "$CFG/containerd.toml" <<TOML
version = 2
root = "$STATE/containerd"
state = "$SOCK_DIR"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # this sandbox lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (-998 for sandboxes) without it
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$SOCK_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CFG/cni"
TOML
# Audit log of writes to fnsession's kinds, pods and Events (metadata only): tests count from it the
# API writes a session costs. Reads and everything else are not logged.
cat > "$CFG/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
    resources:
      - {group: fnsession.dev}
      - {group: "", resources: [pods, events]}
      - {group: events.k8s.io, resources: [events]}
  - level: None
YAML
cat > "$CFG/scheduler.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$PKI/scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
YAML
cat > "$CFG/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false                  # 1.35 refuses cgroup v1 by default; this host may be v1 hybrid
cgroupDriver: cgroupfs               # containerd 1.6 cannot report its driver; no systemd here
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP                    # the apiserver reaches the kubelet (logs, exec) at the node IP
port: 10250
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
rotateCertificates: false
imageGCHighThresholdPercent: 100     # no registry: an image the kubelet deletes cannot come back
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", nodefs.inodesFree: "2%", imagefs.available: "2%"}
failSwapOn: false
maxPods: 110
YAML
cat > "$CFG/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$PKI/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML

# --- the pause image every pod sandbox needs, built here (nothing can be pulled) ---
pause_sum=$(sha256sum "$HERE/pause.c" | cut -d' ' -f1)
if [ ! -f "$IMAGES/pause.tar" ] || [ "$(cat "$IMAGES/pause.inputs" 2>/dev/null)" != "$pause_sum" ]; then
  step "building the pause image"
  rm -rf "$IMAGES/pause-root"; mkdir -p "$IMAGES/pause-root"
  gcc -Os -static -o "$IMAGES/pause-root/pause" "$HERE/pause.c" || die "gcc could not build the pause binary"
  strip "$IMAGES/pause-root/pause"
  "$HERE/../images/mkimage.sh" registry.k8s.io/pause:3.10 "$IMAGES/pause-root" '["/pause"]' "$IMAGES/pause.tar.tmp"
  mv -f "$IMAGES/pause.tar.tmp" "$IMAGES/pause.tar"
  echo "$pause_sum" > "$IMAGES/pause.inputs"
fi

# --- processes ---
# The kubelet rewrites VM-wide kernel settings; record them once, down.sh puts them back.
# shellcheck disable=SC2086
[ -f "$STATE/sysctl.before" ] || sysctl $KERNEL_SETTINGS > "$STATE/sysctl.before"
sysctl -qw fs.inotify.max_user_instances=1024

start_etcd() {
  start etcd "$BIN/etcd" --name=local --data-dir="$STATE/etcd" --listen-client-urls=http://127.0.0.1:2379 \
    --advertise-client-urls=http://127.0.0.1:2379 --listen-peer-urls=http://127.0.0.1:2380 \
    --initial-advertise-peer-urls=http://127.0.0.1:2380 --initial-cluster=local=http://127.0.0.1:2380 \
    --unsafe-no-fsync --log-level=warn
}
step "starting etcd and containerd"
start_etcd
start containerd containerd --config "$CFG/containerd.toml"
if ! wait_for etcd 20 curl -fs --max-time 2 http://127.0.0.1:2379/health; then
  # etcd runs with --unsafe-no-fsync (a test cluster): a SIGKILL can leave data it cannot open
  log "etcd did not come up on its old data (see $LOGS/etcd.log.1); moving it aside and starting empty"
  stop etcd; rm -rf "$STATE/etcd.broken"; mv "$STATE/etcd" "$STATE/etcd.broken"
  start_etcd
  wait_for etcd 30 curl -fs --max-time 2 http://127.0.0.1:2379/health || die "etcd does not start; see $LOGS/etcd.log"
fi
step "starting kube-apiserver"
start apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=6443 \
  --advertise-address="$NODE_IP" --cert-dir="$PKI/selfsigned" --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" --service-cluster-ip-range=$SVC_CIDR \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --audit-policy-file="$CFG/audit-policy.yaml" --audit-log-path="$LOGS/audit.log" --audit-log-maxsize=200 \
  --audit-log-maxbackup=1 --audit-log-mode=batch --audit-log-batch-max-wait=1s --v=1
wait_for kube-apiserver 120 kc get --raw /readyz || die "kube-apiserver is not ready; see $LOGS/apiserver.log"
step "starting controller-manager and scheduler"
# --node-monitor-grace-period 2m (default 50 s): this cluster has one API server. When it comes back
# from an outage (tests/integration/test_api_outage.py kills it for 20 s), the controller-manager's
# informers resume only after their watch back-off (up to 30 s, jittered), so its node lifecycle
# controller would find every node Lease stale and mark the nodes NotReady although each kubelet
# renewed in time, taking every pod out of its Service's endpoints for 10-20 s. An HA control plane
# does not see this; README.md ("When the API server is away") says what it means for a cluster.
start controller-manager "$BIN/kube-controller-manager" --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --controllers='*' --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range=$SVC_CIDR --node-monitor-grace-period=2m --v=1
start scheduler "$BIN/kube-scheduler" --config="$CFG/scheduler.yaml" --bind-address=127.0.0.1 \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" --v=1
wait_for containerd 30 ctr_k8s version || die "containerd is not answering; see $LOGS/containerd.log"
ctr_k8s images import "$IMAGES/pause.tar" >/dev/null
step "starting kubelet and kube-proxy on node $NODE_NAME ($NODE_IP)"
start kubelet "$BIN/kubelet" --config="$CFG/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
  --cert-dir="$STATE/kubelet-pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
add_guards
start kube-proxy "$BIN/kube-proxy" --config="$CFG/kube-proxy.yaml" --v=1
wait_for "node registration" 60 kc get node "$NODE_NAME" || die "the kubelet did not register; see $LOGS/kubelet.log"
kc wait --for=condition=Ready node/"$NODE_NAME" --timeout=120s >/dev/null || die "node not Ready; see $LOGS/kubelet.log"
wait_for "default service account" 60 kc get serviceaccount default || die "no default ServiceAccount"
log "node $NODE_NAME Ready"

add_kwok_nodes
remove_stale_kwok_nodes
echo "KUBECONFIG=$KUBECONFIG_ADMIN"
