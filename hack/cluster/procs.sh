# Process bookkeeping for the local cluster (sourced). Every component is started by `start` and
# recorded in $STATE/<name>.pid together with its executable, so that a pid file left behind by a
# killed run is never trusted for a pid the kernel has since given to an unrelated process.

# start NAME EXECUTABLE ARGS...: run in the background, log to $LOGS/NAME.log, record "pid exe"
start() {
  local n=$1; shift
  mkdir -p "$LOGS" "$STATE"
  nohup "$@" > "$LOGS/$n.log" 2>&1 &
  echo "$! $1" > "$STATE/$n.pid"
}

# pid_of NAME: the recorded pid, if that process is alive and still runs the recorded executable
pid_of() {
  local f=$STATE/$1.pid p exe
  [ -f "$f" ] || return 1
  read -r p exe < "$f" || return 1
  [ -n "$p" ] && [ -d "/proc/$p" ] || return 1
  [ -z "$exe" ] && return 0
  [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$(command -v "$exe" || echo "$exe")")" ] || return 1
  echo "$p"
}

alive() { pid_of "$1" >/dev/null; }

# stop NAME: SIGTERM, up to 10 s, then SIGKILL; forget the pid file either way
stop() {
  local p
  if p=$(pid_of "$1"); then
    kill "$p" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$p" ] || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  fi
  rm -f "$STATE/$1.pid"
}

# wait_for WHAT SECONDS COMMAND...: poll every 0.5 s; non-zero when it never succeeds
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "timed out after ${secs}s waiting for $what; logs in $LOGS" >&2
  return 1
}

COMPONENTS="etcd containerd apiserver controller-manager scheduler kubelet kube-proxy"
