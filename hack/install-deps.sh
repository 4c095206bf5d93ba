#!/usr/bin/env bash
# Install what the local cluster and the image builds need from Debian's archive, once. Idempotent:
# a package already installed is not touched, and nothing runs when all are present.
#   containerd, runc, CNI plugins, iptables: the node runtime and network
#   buildah, mmdebstrap: image builds without Docker or a registry (base image from the apt mirror)
#   busybox-static: the tenant-directory init image
#   gcc: the pause image (a static C binary) and the gateway lane's C module (python3-dev too, for a
#   Python without its headers); curl, openssl, iproute2: used by the scripts
#   clang, libclang-rt-14-dev: make fuzz (the lane's C module built with ASan/UBSan and libFuzzer's hooks)
#   prometheus: promtool for the alert rules' tests, and a Prometheus for the scrape test (the
#   package's service is not started: the test runs its own process on loopback)
#   the shellcheck package: make lint checks the scripts with it
# Then helm, built from its Go module into the cache (hack/tools/helm.sh), for the chart's tests.
set -euo pipefail
. "$(dirname "$0")/cluster/env.sh"
PKGS="unzip containerd runc containernetworking-plugins iptables buildah mmdebstrap busybox-static gcc libc6-dev curl openssl iproute2 procps
  clang libclang-rt-14-dev prometheus shellcheck"

# Go >= 1.GO_MIN_MINOR builds Kubernetes; without it, fetch the toolchain from the Go module proxy.
go_ok() { command -v go >/dev/null && [ "$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')" -ge "$GO_MIN_MINOR" ] 2>/dev/null; }
if ! go_ok; then
  step "fetching Go $GO_TOOLCHAIN_VERSION from the Go module proxy (no recent go on PATH)"
  if ! command -v curl >/dev/null || ! command -v unzip >/dev/null; then apt-get update -qq && apt-get install -y -qq curl unzip >/dev/null; fi
  mod=golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-amd64.zip" -o "$tmp/go.zip"
  unzip -q "$tmp/go.zip" -d "$tmp"
  rm -rf "$CACHE/go-$GO_TOOLCHAIN_VERSION"; mkdir -p "$CACHE"
  mv "$tmp/$mod" "$CACHE/go-$GO_TOOLCHAIN_VERSION"
  chmod -R u+w "$CACHE/go-$GO_TOOLCHAIN_VERSION"; chmod +x "$CACHE/go-$GO_TOOLCHAIN_VERSION"/bin/* "$CACHE/go-$GO_TOOLCHAIN_VERSION"/pkg/tool/*/*
  PATH=$CACHE/go-$GO_TOOLCHAIN_VERSION/bin:$PATH
  go_ok || die "the fetched Go does not run: $CACHE/go-$GO_TOOLCHAIN_VERSION"
  log "$(go version)"
fi

# Python's headers where the Python that make venv uses lacks them (Debian's own): the gateway lane's
# C module is compiled when fnsession is installed
py=${PYTHON:-python3.11}
if command -v "$py" >/dev/null && ! "$py" -c "import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))"; then
  PKGS="$PKGS python3-dev"
fi

missing=()
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  log "system packages present"
else
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (the local cluster runs a kubelet, which needs root anyway)"
  step "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the package's own Prometheus service is not wanted (where systemd started it): the tests run theirs
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  log "installed ${missing[*]}"
fi
"$(dirname "$0")/tools/helm.sh" >/dev/null \
  || log "warning: helm was not built; the chart's tests fail under FNSESSION_REQUIRE_ALL=1 (make test)"
