#!/usr/bin/env bash
# Print the local cluster's state: each component's pid, the nodes, the images in containerd, and the
# KUBECONFIG to use. Exit status 0 only when every component runs and the node is Ready.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"; . "$HERE/procs.sh"
ok=0
printf '%-20s %s\n' "cache" "$CACHE"
printf '%-20s %s\n' "versions" "$(cat "$BIN/.versions" 2>/dev/null || echo 'not built (make cluster-up builds them)')"
for c in $COMPONENTS kwok; do
  if p=$(pid_of "$c"); then printf '%-20s running (pid %s)\n' "$c" "$p"
  elif [ "$c" = kwok ]; then printf '%-20s %s\n' "$c" "not running (make cluster-up KWOK_NODES=N)"
  else printf '%-20s %s\n' "$c" "STOPPED"; ok=1; fi
done
if [ $ok = 0 ] && kc get --raw /readyz >/dev/null 2>&1; then
  echo; kc get nodes -o wide 2>/dev/null
  ready=$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)
  [ "$ready" = True ] || { echo "node $NODE_NAME is not Ready"; ok=1; }
  echo; echo "images in the node's containerd:"
  ctr_k8s images ls -q 2>/dev/null | grep -v '^sha256:' | sed 's/^/  /'
else
  ok=1
fi
echo
if [ $ok = 0 ]; then echo "cluster: up"; else echo "cluster: DOWN (make cluster-up)"; fi
echo "KUBECONFIG=$KUBECONFIG_ADMIN"
exit $ok
