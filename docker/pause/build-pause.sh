#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image locally, since no registry is reachable here: Kubernetes'
# own build/pause/linux/pause.c (from the Go module cache, same release as the kubelet), linked
# statically, alone in an image FROM scratch. containerd's CRI names it as sandbox_image.
# Idempotent: skipped when podman's storage holds the image.
set -euo pipefail

KUBERNETES_VERSION="v1.34.2"
TAG="localhost/vlf-pause:3.10"
if podman image exists "${TAG}"; then
  echo "${TAG}: present"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
source_dir="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
gcc -Os -static -DVERSION="${KUBERNETES_VERSION}" -o "${work}/pause" "${source_dir}/build/pause/linux/pause.c"
strip "${work}/pause"
container="$(buildah from scratch)"
buildah copy "${container}" "${work}/pause" /pause >/dev/null
buildah config --entrypoint '["/pause"]' --user 65535:65535 "${container}"
buildah commit --quiet --format docker "${container}" "${TAG}" >/dev/null
buildah rm "${container}" >/dev/null
echo "${TAG}: built"
