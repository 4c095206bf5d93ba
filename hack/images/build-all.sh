#!/usr/bin/env bash
# Build the project's three images into archives under $FNSESSION_CACHE/images, skipping any whose
# inputs did not change, then load them into the cluster with load.sh:
#   fnsession             the operator, gateway and CLI (the repo's Dockerfile, via buildah)
#   sample-function       the function instance tests and benchmarks run (a static Go binary)
#   tenant-init           makes a tenant directory owned by the session's uid/gid, mode 0700 (busybox)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/common.sh"
"$here/../install-deps.sh"
. "$here/common.sh"   # again: install-deps may just have fetched Go into the cache

# sample function: a static binary in a single-layer image, user 65532 unless the pod says otherwise
src=$REPO/images/sample-function
if inputs_changed sample-function "$src"/* <(go version); then
  step "building $SAMPLE_FUNCTION_IMAGE"
  root=$IMAGES/sample-function-root; rm -rf "$root"; mkdir -p "$root"
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$root/sample-function" .)
  "$here/mkimage.sh" "$SAMPLE_FUNCTION_IMAGE" "$root" '["/sample-function"]' "$IMAGES/sample-function.tar" null 65532:65532
  record_inputs sample-function
else log "$SAMPLE_FUNCTION_IMAGE unchanged"; fi

# tenant init: Debian's static busybox; the pod gives the command (chown/chmod of the tenant directory)
bb=/bin/busybox
if inputs_changed tenant-init "$bb"; then
  step "building $TENANT_INIT_IMAGE"
  root=$IMAGES/tenant-init-root; rm -rf "$root"; mkdir -p "$root/bin"
  cp "$bb" "$root/bin/busybox"
  for a in sh chown chmod mkdir stat id ls cat; do ln -s busybox "$root/bin/$a"; done
  "$here/mkimage.sh" "$TENANT_INIT_IMAGE" "$root" null "$IMAGES/tenant-init.tar" '["/bin/sh"]'
  record_inputs tenant-init
else log "$TENANT_INIT_IMAGE unchanged"; fi

# the project image, from the repo's Dockerfile
listing=$(cd "$REPO" && git ls-files -co --exclude-standard Dockerfile .dockerignore pyproject.toml setup.py README.md operator) ||
  die "git could not list the image's build context in $REPO"
mapfile -t ctx_files < <(sort <<< "$listing")
if inputs_changed fnsession "${ctx_files[@]/#/$REPO/}"; then
  step "building $FNSESSION_IMAGE from $REPO/Dockerfile (buildah; first time about 1 minute)"
  "$here/build-image.sh" "$REPO" "$FNSESSION_IMAGE" "$IMAGES/fnsession.tar"
  record_inputs fnsession
else log "$FNSESSION_IMAGE unchanged"; fi

"$here/load.sh" "$IMAGES/sample-function.tar" "$IMAGES/tenant-init.tar" "$IMAGES/fnsession.tar"
