# Settings for the image scripts (sourced). Everything buildah stores lives under $CACHE/buildah, so
# nothing touches /var/lib/containers or the cluster's containerd.
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/env.sh"
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

# inputs_changed NAME FILES...: true when the files' content differs from the last build of NAME
inputs_changed() {
  local name=$1; shift
  local sum; sum=$(cat "$@" | sha256sum | cut -d' ' -f1)
  NEW_INPUTS_SUM=$sum
  [ "$(cat "$IMAGES/$name.inputs" 2>/dev/null)" != "$sum" ] || [ ! -f "$IMAGES/$name.tar" ]
}
record_inputs() { echo "$NEW_INPUTS_SUM" > "$IMAGES/$1.inputs"; }
