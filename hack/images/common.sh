# shellcheck shell=bash disable=SC2034  # sourced by the image scripts, which use the variables set here
# Settings for the image scripts (sourced). Everything buildah stores lives under $CACHE/buildah, so
# nothing touches /var/lib/containers or the cluster's containerd.
IMAGE_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$IMAGE_SCRIPTS/../.." && pwd)
. "$IMAGE_SCRIPTS/../cluster/env.sh"
WORK=$CACHE/buildah
: "${BASE_IMAGE:=localhost/pybase:3.11}"
: "${STORAGE_DRIVER:=overlay}"          # "vfs" also works (slower, more disk)
export BUILDAH_ISOLATION=chroot         # never the default OCI isolation: it creates a CNI bridge on 10.88.0.0/16, clashing with cni0
B=(buildah --root "$WORK/storage" --runroot "$WORK/runroot" --storage-driver "$STORAGE_DRIVER")
mkdir -p "$WORK" "$IMAGES"

# The images the project builds; tests and manifests use exactly these names (never :latest, which
# the kubelet would try to pull).
: "${FNSESSION_IMAGE:=localhost/fnsession:dev}"
: "${SAMPLE_FUNCTION_IMAGE:=localhost/fnsession-sample-function:dev}"
: "${TENANT_INIT_IMAGE:=localhost/fnsession-tenant-init:dev}"

# inputs_changed NAME FILES...: true when the files (their names and contents), the image names and
# the build scripts differ from the last build of NAME, or its archive is missing
inputs_changed() {
  local name=$1; shift
  NEW_INPUTS_SUM=$( { echo "$FNSESSION_IMAGE $SAMPLE_FUNCTION_IMAGE $TENANT_INIT_IMAGE $BASE_IMAGE"
    for f in "$@" "$IMAGE_SCRIPTS"/build-all.sh "$IMAGE_SCRIPTS"/mkimage.sh "$IMAGE_SCRIPTS"/build-image.sh; do
      printf '%s\0' "${f#"$REPO"/}"; cat "$f"; done; } | sha256sum | cut -d' ' -f1)
  [ "$(cat "$IMAGES/$name.inputs" 2>/dev/null)" != "$NEW_INPUTS_SUM" ] || [ ! -f "$IMAGES/$name.tar" ]
}
record_inputs() { echo "$NEW_INPUTS_SUM" > "$IMAGES/$1.inputs"; }
