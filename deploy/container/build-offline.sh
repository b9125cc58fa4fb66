#!/usr/bin/env bash
# Builds the hf-edge image with buildah where no container registry can be reached, from the same
# Containerfile: no base image is pulled. The runtime base is made here from what distroless/cc
# holds that hf-edge needs (the libraries BINARY links, found with ldd, the system's CA
# certificates, passwd/group with the nonroot user 65532, /tmp), and the binary, built outside
# (cargo build --release), is staged, stripped, for the Containerfile's build-prebuilt stage.
#
#   deploy/container/build-offline.sh target/release/hf-edge [TAG]      (TAG: localhost/hf-edge:latest)
#
# The base is tagged by a hash of its content and reused when it exists, so a rebuild costs one
# layer. buildah runs with the vfs storage driver and chroot isolation (no overlay, no user
# namespaces needed); BUILDAH_STORAGE_DRIVER overrides the driver.
set -euo pipefail

binary=${1:?usage: build-offline.sh BINARY [TAG]}
tag=${2:-localhost/hf-edge:latest}
repo=$(cd "$(dirname "$0")/../.." && pwd)
buildah=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
[ -x "$binary" ] || { echo "build-offline.sh: $binary is not an executable" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The runtime base.
rootfs=$work/base/rootfs
mkdir -p "$rootfs"/{etc/ssl/certs,tmp,home/nonroot}
chmod 1777 "$rootfs/tmp"
for lib in $(ldd "$binary" | awk '/=>/ { print $3 } /^[ \t]*\// { print $1 }'); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$rootfs/etc/hosts"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
chown 65532:65532 "$rootfs/home/nonroot"
base_hash=$(cd "$rootfs" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
base=localhost/hf-edge-runtime-base:$base_hash
if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  printf 'FROM scratch\nCOPY rootfs/ /\n' > "$work/base/Containerfile"
  "${buildah[@]}" bud --isolation chroot --quiet -t "$base" "$work/base" >/dev/null
fi

# The prebuilt root, inside the build context (the Containerfile copies from it).
staged=$repo/target/container-root
rm -rf "$staged"
# Stripped: the release profile keeps line tables for profiling (debug = 1), 100 MB the image
# does not need.
install -D -s -m 0755 "$binary" "$staged/usr/local/bin/hf-edge"
mkdir -p "$staged/var/cache" "$staged/store"

# --format docker: OCI images have no HEALTHCHECK.
before=$("${buildah[@]}" containers --quiet)
"${buildah[@]}" bud --isolation chroot --format docker --quiet \
  -f "$repo/deploy/container/Containerfile" \
  --build-arg BUILD=prebuilt --build-arg RUNTIME_IMAGE="$base" \
  -t "$tag" "$repo" >/dev/null
# buildah 1.28 leaves the working containers of stages copied from, and their images, behind:
# with the vfs driver each is a whole copy, so a build would grow the storage by the binary.
for container in $("${buildah[@]}" containers --quiet); do
  grep -qx "$container" <<<"$before" || "${buildah[@]}" rm "$container" >/dev/null
done
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
rm -rf "$staged"
echo "$tag"
