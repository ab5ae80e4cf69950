#!/usr/bin/env bash
# Build and push one container image: build-image.sh CONTAINERFILE IMAGE (buildah, rootless).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
file=${1:?containerfile}
image=${2:?image name}
[ -f "$top/$file" ] || { echo "build-image: no $file" >&2; exit 2; }
buildah login -u "${CI_REGISTRY_USER:?}" -p "${CI_REGISTRY_PASSWORD:?}" "${CI_REGISTRY:?}"
buildah bud --layers -f "$top/$file" -t "$image" "$top"
buildah push "$image"
