#!/usr/bin/env bash
# Install what the local cluster and the image builds need from Debian's archive, once. Idempotent:
# a package already installed is not touched, and nothing runs when all are present.
#   containerd, runc, CNI plugins, iptables: the node runtime and network
#   buildah, mmdebstrap: image builds without Docker or a registry (base image from the apt mirror)
#   busybox-static: the tenant-directory init image
#   gcc: the pause image (a static C binary); curl, openssl, iproute2: used by the scripts
set -euo pipefail
. "$(dirname "$0")/cluster/env.sh"
PKGS="containerd runc containernetworking-plugins iptables buildah mmdebstrap busybox-static gcc libc6-dev curl openssl iproute2 procps"
missing=()
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then log "system packages present"; exit 0; fi
[ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (the local cluster runs a kubelet, which needs root anyway)"
step "installing from Debian: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed ${missing[*]}"
