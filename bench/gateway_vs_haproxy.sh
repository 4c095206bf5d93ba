#!/usr/bin/env bash
# Requests/s, latency and CPU per request of the gateway's invocation path, of the direct path to the
# pod, and of HAProxy routing the same sessions by the same header from a map, in one run.
# Load generator (wrk) and server are pinned to different cores.
#   bench/gateway_vs_haproxy.sh        (needs the local cluster with fnsession deployed: make deploy)
#   ROUNDS=9 DURATION=5 CONNS=16       (the defaults: 9 interleaved rounds of 5 s per path)
#   WORKERS=2 bench/gateway_vs_haproxy.sh   the gateway with --workers 2 against HAProxy with nbthread 2,
#     both on cores 0-1 (and wrk with 2 threads on the same cores: on a 2-core machine the load generator
#     shares the servers' cores; CPU per request counts every worker process)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
. "$REPO/hack/cluster/env.sh"
export KUBECONFIG=${KUBECONFIG:-$KUBECONFIG_ADMIN}
K=("$BIN/kubectl")
DURATION=${DURATION:-5}; CONNS=${CONNS:-16}; ROUNDS=${ROUNDS:-9}; WORKERS=${WORKERS:-1}
if [ "$WORKERS" -gt 1 ]; then SERVER_CPUS=0-$((WORKERS - 1)); WRK_CPUS=0-$(($(nproc) - 1)); CPU_MAP="1/1-$WORKERS $SERVER_CPUS"
else SERVER_CPUS=0; WRK_CPUS=1; CPU_MAP="1/1 0"; fi
command -v haproxy >/dev/null && command -v wrk >/dev/null || \
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy wrk >/dev/null; }
NS=fns-bench-gw; W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"; "${K[@]}" delete ns $NS --wait=false >/dev/null 2>&1' EXIT
"${K[@]}" wait --for=delete ns/$NS --timeout=180s >/dev/null 2>&1 || true  # an earlier run's, still going
"${K[@]}" create ns $NS >/dev/null
"${K[@]}" -n $NS apply -f "$REPO/examples/function-shared.yaml" >/dev/null
"${K[@]}" -n $NS create serviceaccount bench >/dev/null
"${K[@]}" -n $NS create role bench --verb=get,list,create --resource=functionsessions.fnsession.dev >/dev/null
"${K[@]}" -n $NS create rolebinding bench --role=bench --serviceaccount=$NS:bench >/dev/null
TOKEN=$("${K[@]}" -n $NS create token bench)

# the gateway on loopback, authentication on, pinned to core 0 (WORKERS>1: its workers on cores 0..WORKERS-1)
taskset -c "$SERVER_CPUS" "$REPO/.venv/bin/fnsession" gateway --auth kubernetes --host 127.0.0.1 --port 18090 \
  --workers "$WORKERS" > "$W/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18090/healthz && break; sleep 0.1; done
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'x-session-id: bench-1' http://127.0.0.1:18090/fn/echo/
POD_IP=$("${K[@]}" -n $NS get fsess -o jsonpath='{.items[0].status.instance.podIP}')
# the instance's process on this host (the local cluster's kubelet runs here), found by its pod's cgroup
POD_UID=$("${K[@]}" -n $NS get pod "$("${K[@]}" -n $NS get fsess -o jsonpath='{.items[0].status.instance.podName}')" \
          -o jsonpath='{.metadata.uid}')
FUNCTION_PID=$(for p in $(pgrep -x sample-function); do
  grep -qE "pod${POD_UID}|pod${POD_UID//-/_}" /proc/$p/cgroup && echo "$p"; done | head -1)
[ -n "$FUNCTION_PID" ] || { echo "the instance's process (pod $POD_UID) is not on this host" >&2; exit 1; }

# HAProxy: one thread on core 0 (WORKERS>1: that many threads), the session's server chosen from a map by the same header
echo "bench-1 $POD_IP:9000" > "$W/sessions.map"
cat > "$W/haproxy.cfg" <<CFG
global
  nbthread $WORKERS
  cpu-map $CPU_MAP
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

# One measurement: wrk for DURATION seconds; prints "rps p50 p99 server_cpu function_cpu" (µs per
# request: the process's user+system time from /proc over the run, divided by the requests; the
# server is HAProxy or the gateway, "-" for the direct path; the function is the instance's process).
cpu() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }  # pids
measure() { # pid url [header...]
  local pid=$1 url=$2; shift 2
  local hdrs=(); for h in "$@"; do hdrs+=(-H "$h"); done
  local before=0 after=0 fn_before fn_after
  [ "$pid" != - ] && before=$(cpu "$pid")
  fn_before=$(cpu "$FUNCTION_PID")
  taskset -c "$WRK_CPUS" wrk -t"$WORKERS" -c"$CONNS" -d"${DURATION}s" --latency "${hdrs[@]}" "$url" > "$W/wrk.txt"
  fn_after=$(cpu "$FUNCTION_PID")
  [ "$pid" != - ] && after=$(cpu "$pid")
  awk -v t=$((after - before)) -v f=$((fn_after - fn_before)) -v hz="$(getconf CLK_TCK)" -v pid="$pid" '
    /Requests\/sec/ {rps=$2} /requests in/ {n=$1} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
    /Non-2xx/ {bad=$NF}
    END {if (bad) {print "wrk saw non-2xx answers" > "/dev/stderr"; exit 1}
         printf "%s %s %s %s %.1f\n", rps, p50, p99, (pid=="-" ? "-" : sprintf("%.1f", t / hz * 1e6 / n)), f / hz * 1e6 / n}' "$W/wrk.txt"
}
HAPROXY_PID=$(pgrep -f "haproxy -f $W/haproxy.cfg" | head -1)
GATEWAY_PID="$GATEWAY_PID $(pgrep -P "$GATEWAY_PID" | tr '\n' ' ' || true)"  # the process, and its workers if several (none with one)
# Rounds interleave the three paths, so that a slow spell of this machine (a VM: other tenants' load
# moves the figures by 2x within minutes) hits all of them alike; the ratio is taken within each round.
: > "$W/rounds"
for round in $(seq "$ROUNDS"); do
  d=$(measure - "http://$POD_IP:9000/")
  h=$(measure "$HAPROXY_PID" "http://127.0.0.1:18091/" "x-session-id: bench-1")
  g=$(measure "$GATEWAY_PID" "http://127.0.0.1:18090/fn/echo/" "x-session-id: bench-1" "Authorization: Bearer $TOKEN")
  echo "$round $d $h $g" >> "$W/rounds"
  read -r _ drps _ _ _ _ hrps _ _ _ _ grps _ <<< "$round $d $h $g"
  printf 'round %d/%d: direct %s, haproxy %s, gateway %s requests/s (gateway/haproxy %.2f)\n' \
    "$round" "$ROUNDS" "$drps" "$hrps" "$grps" "$(awk -v a="$grps" -v b="$hrps" 'BEGIN {print a / b}')" >&2
done
# the median round by gateway/haproxy ratio, reported whole (its figures were measured side by side)
python3 - "$W/rounds" <<'PY'
import statistics, sys
def us(text):  # wrk's latency: 402.00us, 1.07ms, 1.20s
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(text)
rows = [line.split() for line in open(sys.argv[1])]
ratio = lambda r: float(r[11]) / float(r[6])  # columns: round, then rps p50 p99 cpu fcpu per path
rows.sort(key=ratio)
mid = rows[len(rows) // 2]
import os
if int(os.environ.get("WORKERS", "1")) > 1:
    print(f"gateway --workers {os.environ['WORKERS']} against HAProxy nbthread {os.environ['WORKERS']}")
print(f"{len(rows)} rounds; gateway/haproxy requests/s per round: " + ", ".join(f"{ratio(r):.2f}" for r in rows))
print(f"median round (#{mid[0]}), latency added to the direct path's, and each path against HAProxy:\n")
print("| path | requests/s | p50 | p99 | added p50 | added p99 | server CPU µs/request | function CPU µs/request "
      "| requests/s vs haproxy | server CPU/request vs haproxy |")
print("|---|---|---|---|---|---|---|---|---|---|")
d50, d99 = us(mid[2]), us(mid[3])
for name, (rps, p50, p99, cpu, fcpu) in (("direct", mid[1:6]), ("haproxy", mid[6:11]), ("gateway", mid[11:16])):
    added = ("-", "-") if name == "direct" else (f"{us(p50) - d50:.0f} µs", f"{us(p99) - d99:.0f} µs")
    cpu_ratio = "-" if cpu == "-" else f"{float(cpu) / float(mid[9]):.2f}×"
    print(f"| {name} | {float(rps):.0f} | {p50} | {p99} | {added[0]} | {added[1]} | {cpu} | {fcpu} | "
          f"{float(rps) / float(mid[6]):.2f}× | {cpu_ratio} |")
cpus = [float(r[14]) / float(r[9]) for r in rows]
print(f"\ngateway/haproxy CPU per request over all rounds: median {statistics.median(cpus):.2f}× ("
      + ", ".join(f"{c:.2f}" for c in sorted(cpus)) + ")")
PY
