# shellcheck shell=bash disable=SC2034  # sourced by the local-cluster scripts, which use the variables set here
# Process bookkeeping for the local cluster (sourced). Every component is started by `start` and
# recorded in $STATE/<name>.pid together with its executable, so that a pid file left behind by a
# killed run is never trusted for a pid the kernel has since given to an unrelated process.

# start NAME EXECUTABLE ARGS...: run in the background, log to $LOGS/NAME.log (the previous one is
# kept as NAME.log.1), record "pid exe"
start() {
  local n=$1; shift
  mkdir -p "$LOGS" "$STATE"
  [ -f "$LOGS/$n.log" ] && mv -f "$LOGS/$n.log" "$LOGS/$n.log.1"
  # every descriptor above 2 closed: a daemon must not keep a lock (ours on 9, or a caller's, e.g.
  # `flock FILE make cluster-up` passes FILE on 3) nor a pipe of whoever started it
  (
    for fd in "/proc/$BASHPID/fd"/*; do
      fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec nohup "$@"
  ) > "$LOGS/$n.log" 2>&1 &
  echo "$! $1" > "$STATE/$n.pid"
}

# pid_of NAME: the recorded pid, if that process is alive and is still the one we started (same
# executable, and for containerd the same config file: the system may run a containerd of its own)
pid_of() {
  local f=$STATE/$1.pid p exe running want
  [ -f "$f" ] || return 1
  read -r p exe < "$f" || return 1
  [ -n "$p" ] && [ -n "$exe" ] && [ -d "/proc/$p" ] || return 1
  running=$(readlink "/proc/$p/exe" 2>/dev/null) || return 1
  running=${running% (deleted)}   # a binary rebuilt while it runs
  want=$(readlink -f "$(command -v "$exe" || echo "$exe")")
  [ "$running" = "$want" ] || return 1
  if [ "$1" = containerd ]; then tr '\0' ' ' < "/proc/$p/cmdline" | grep -q -- "--config $CFG/containerd.toml" || return 1; fi
  echo "$p"
}

alive() { pid_of "$1" >/dev/null; }

# running_pid PID: the process exists and is not a zombie (this machine's init reaps orphans slowly)
running_pid() {
  local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st%% *}" != Z ]
}

# stop NAME: SIGTERM, up to 10 s, then SIGKILL; forget the pid file either way
stop() {
  local p
  if p=$(pid_of "$1"); then
    kill "$p" 2>/dev/null
    for _ in $(seq 100); do running_pid "$p" || break; sleep 0.1; done
    running_pid "$p" && kill -9 "$p" 2>/dev/null
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
