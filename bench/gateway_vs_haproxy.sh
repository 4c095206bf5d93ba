#!/usr/bin/env bash
# Requests/s, latency and CPU per request of the gateway's invocation path, of the direct path to the
# pod, and of HAProxy routing the same sessions by the same header from a map, in one run.
# Load generator (wrk) and server are pinned to different cores.
#   bench/gateway_vs_haproxy.sh        (needs the local cluster with fnsession deployed: make deploy)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
. "$REPO/hack/cluster/env.sh"
export KUBECONFIG=${KUBECONFIG:-$KUBECONFIG_ADMIN}
K=("$BIN/kubectl")
DURATION=${DURATION:-10}; CONNS=${CONNS:-16}
command -v haproxy >/dev/null && command -v wrk >/dev/null || \
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy wrk >/dev/null; }
NS=fns-bench-gw; W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"; "${K[@]}" delete ns $NS --wait=false >/dev/null 2>&1' EXIT
"${K[@]}" create ns $NS >/dev/null
"${K[@]}" -n $NS apply -f "$REPO/examples/function-shared.yaml" >/dev/null
"${K[@]}" -n $NS create serviceaccount bench >/dev/null
"${K[@]}" -n $NS create role bench --verb=get,list,create --resource=functionsessions.fnsession.dev >/dev/null
"${K[@]}" -n $NS create rolebinding bench --role=bench --serviceaccount=$NS:bench >/dev/null
TOKEN=$("${K[@]}" -n $NS create token bench)

# the gateway on loopback, authentication on, pinned to core 0
taskset -c 0 "$REPO/.venv/bin/fnsession" gateway --auth kubernetes --host 127.0.0.1 --port 18090 > "$W/gateway.log" 2>&1 &
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18090/healthz && break; sleep 0.1; done
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'x-session-id: bench-1' http://127.0.0.1:18090/fn/echo/
POD_IP=$("${K[@]}" -n $NS get fsess -o jsonpath='{.items[0].status.instance.podIP}')

# HAProxy: one thread on core 0, the session's server chosen from a map by the same header
echo "bench-1 $POD_IP:9000" > "$W/sessions.map"
cat > "$W/haproxy.cfg" <<CFG
global
  nbthread 1
  cpu-map 1/1 0
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:18091
  http-request set-var(txn.target) req.hdr(x-session-id),map($W/sessions.map)
  http-request return status 404 if !{ var(txn.target) -m found }
  default_backend be
backend be
  http-reuse always
  server-template s 1 $POD_IP:9000
CFG
haproxy -f "$W/haproxy.cfg" > "$W/haproxy.log" 2>&1 &
sleep 1

run() { # name url [header...]
  local name=$1 url=$2; shift 2
  local hdrs=(); for h in "$@"; do hdrs+=(-H "$h"); done
  local pid=${SERVER_PID:-}
  local before after
  before=$( [ -n "$pid" ] && awk '{print $14+$15}' /proc/$pid/stat || echo 0)
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdrs[@]}" "$url" > "$W/$name.txt"
  after=$( [ -n "$pid" ] && awk '{print $14+$15}' /proc/$pid/stat || echo 0)
  local rps p50 p99 reqs
  rps=$(awk '/Requests\/sec/ {print $2}' "$W/$name.txt")
  p50=$(awk '$1=="50%" {print $2}' "$W/$name.txt"); p99=$(awk '$1=="99%" {print $2}' "$W/$name.txt")
  reqs=$(awk '/requests in/ {print $1}' "$W/$name.txt")
  local cpu_us="n/a"
  [ -n "$pid" ] && cpu_us=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$cpu_us"
}
echo "| path | requests/s | p50 | p99 | server CPU µs/request |"
echo "|---|---|---|---|---|"
SERVER_PID= run direct "http://$POD_IP:9000/"
SERVER_PID=$(pgrep -f "haproxy -f $W/haproxy.cfg" | head -1) run haproxy "http://127.0.0.1:18091/" "x-session-id: bench-1"
SERVER_PID=$(pgrep -f "fnsession gateway --auth kubernetes --host 127.0.0.1 --port 18090" | head -1) \
  run gateway "http://127.0.0.1:18090/fn/echo/" "x-session-id: bench-1" "Authorization: Bearer $TOKEN"
