#!/usr/bin/env bash
# Load image archives into the cluster's container runtime; no registry involved.
#   IMAGE_LOADER=local  (default) import into the local cluster's containerd (make cluster-up)
#   IMAGE_LOADER=kind   `kind load image-archive` into the kind cluster $KIND_CLUSTER (default fnsession)
#   IMAGE_LOADER='any command'  run as: <command> <archive>, once per archive
# usage: load.sh ARCHIVE...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/../cluster/env.sh"
: "${IMAGE_LOADER:=local}"
for tar in "$@"; do
  case "$IMAGE_LOADER" in
    local)
      [ -S "$SOCK" ] || die "the local cluster is not running (make cluster-up), or set IMAGE_LOADER=kind"
      ctr_k8s images import "$tar" >/dev/null ;;
    kind) "${KIND:-kind}" load image-archive "$tar" --name "${KIND_CLUSTER:-fnsession}" ;;
    *) $IMAGE_LOADER "$tar" ;;
  esac
  log "loaded $(basename "$tar") ($IMAGE_LOADER)"
done
