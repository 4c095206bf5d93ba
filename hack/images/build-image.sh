#!/usr/bin/env bash
# Build a Dockerfile with buildah (chroot isolation, no registry) into an importable OCI archive.
# usage: build-image.sh CONTEXT_DIR IMAGE_REF OUT_TAR
#   IMAGE_REF must be fully qualified (localhost/name:tag): that exact name is what
#   `ctr -n k8s.io images import` registers and what a pod spec must use.
# The Dockerfile's `ARG BASE` is set to $BASE_IMAGE, a local stand-in for python:3.11-slim made by
# make-base.sh from Debian's archive the first time (about 20 s) and kept as an archive in the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/common.sh"
ctx=$1; image=$2; out=$3
if ! "${B[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  if [ -f "$WORK/pybase.oci.tar" ]; then "${B[@]}" pull --quiet "oci-archive:$WORK/pybase.oci.tar" >/dev/null
  else
    step "making the base image $BASE_IMAGE from Debian's archive (once, about 30 s; log: $LOGS/make-base.log)"
    mkdir -p "$LOGS"; "$here/make-base.sh" > "$LOGS/make-base.log" 2>&1 || die "base image failed; see $LOGS/make-base.log"
  fi
fi
extra=()
# RUN steps share the host network (chroot isolation) but not its CA bundle; pip behind a
# TLS-intercepting egress needs the host's bundle. The bind mount is not committed to the image.
[ -f /etc/ssl/certs/ca-certificates.crt ] && extra+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
"${B[@]}" build --quiet --isolation chroot --pull=never --layers "${extra[@]}" \
   --build-arg BASE="$BASE_IMAGE" -t "$image" -f "$ctx/Dockerfile" "$ctx" >/dev/null
rm -f "$out"
"${B[@]}" push --quiet "$image" "oci-archive:$out:$image"
