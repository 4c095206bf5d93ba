#!/usr/bin/env bash
# The gateway's data plane against HAProxy on loopback, without the cluster (for iterating on the data
# plane's speed; bench/gateway_vs_haproxy.sh is the figure of record). The sample function (built with
# go from images/sample-function) listens on 127.0.0.1:$FN_PORT; HAProxy routes by x-session-id from a
# map to it, bench/gateway_loopback.py (the real protocol classes on uvloop, a session routed and a
# token cached) likewise. wrk on core 1, the servers on core 0, rounds interleaved; CPU per request
# from /proc, as in gateway_vs_haproxy.sh.
#   ROUNDS=7 DURATION=4 CONNS=16 bench/gateway_loopback.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-4}; CONNS=${CONNS:-16}; ROUNDS=${ROUNDS:-7}
FN_PORT=${FN_PORT:-19000}; GW_PORT=${GW_PORT:-18190}; HA_PORT=${HA_PORT:-18191}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
FN=${SAMPLE_FUNCTION:-$W/sample-function}
[ -x "$FN" ] || (cd "$REPO/images/sample-function" && go build -o "$FN" .)
PORT=$FN_PORT POD_NAME=echo-loopback "$FN" > "$W/fn.log" 2>&1 &
taskset -c 0 "$REPO/.venv/bin/python" "$HERE/gateway_loopback.py" --port "$GW_PORT" --upstream "127.0.0.1:$FN_PORT" \
  > "$W/gateway.log" 2>&1 &
GW_PID=$!
echo "bench-1 127.0.0.1:$FN_PORT" > "$W/sessions.map"
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
  bind 127.0.0.1:$HA_PORT
  http-request set-var(txn.target) req.hdr(x-session-id),map($W/sessions.map)
  http-request return status 404 if !{ var(txn.target) -m found }
  default_backend be
backend be
  http-reuse always
  server-template s 1 127.0.0.1:$FN_PORT
CFG
haproxy -f "$W/haproxy.cfg" > "$W/haproxy.log" 2>&1 &
HA_PID=$!
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$FN_PORT/" && break; sleep 0.1; done
TOKEN=$("$REPO/.venv/bin/python" -c "import sys; sys.path.insert(0, '$HERE'); from gateway_python_path import TOKEN; print(TOKEN)")
for _ in $(seq 100); do curl -fs -o /dev/null -H 'x-session-id: bench-1' -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$GW_PORT/fn/echo/" && break; sleep 0.1; done

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
measure() { # pid url header...
  local pid=$1 url=$2; shift 2
  local hdrs=(); for h in "$@"; do hdrs+=(-H "$h"); done
  local before after; before=$(cpu "$pid")
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdrs[@]}" "$url" > "$W/wrk.txt"
  after=$(cpu "$pid")
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /Requests\/sec/ {rps=$2} /requests in/ {n=$1} $1=="50%" {p50=$2} /Non-2xx/ {bad=$NF}
    END {if (bad) {print "wrk saw non-2xx answers" > "/dev/stderr"; exit 1}
         printf "%s %s %.2f\n", rps, p50, t / hz * 1e6 / n}' "$W/wrk.txt"
}
: > "$W/rounds"
for round in $(seq "$ROUNDS"); do
  h=$(measure "$HA_PID" "http://127.0.0.1:$HA_PORT/" "x-session-id: bench-1")
  g=$(measure "$GW_PID" "http://127.0.0.1:$GW_PORT/fn/echo/" "x-session-id: bench-1" "Authorization: Bearer $TOKEN")
  echo "$round $h $g" | tee -a "$W/rounds" >&2
done
python3 - "$W/rounds" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
rps = sorted(float(r[4]) / float(r[1]) for r in rows)
cpu = sorted(float(r[6]) / float(r[3]) for r in rows)
med = lambda xs: statistics.median(xs)
print(f"haproxy: {med([float(r[1]) for r in rows]):.0f} req/s, {med([float(r[3]) for r in rows]):.2f} µs CPU/request; "
      f"gateway: {med([float(r[4]) for r in rows]):.0f} req/s, {med([float(r[6]) for r in rows]):.2f} µs CPU/request")
print(f"gateway/haproxy requests/s: median {med(rps):.2f} ({', '.join(f'{x:.2f}' for x in rps)})")
print(f"gateway/haproxy CPU/request: median {med(cpu):.2f} ({', '.join(f'{x:.2f}' for x in cpu)})")
PY
