#!/usr/bin/env bash
# Builds the service images without a Docker daemon or a registry, into podman's storage (the
# single-node cluster test streams them from there into its containerd with `podman save`):
#   localhost/vlf-base:bookworm  Debian bookworm + python3, from Debian packages (mmdebstrap)
#   localhost/vlf-pause:3.10     the pod sandbox image (docker/pause/build-pause.sh)
#   localhost/vlf:cpu            docker/Dockerfile.cpu: every service, no torch
#   localhost/vlf:cpu-train      docker/Dockerfile.cpu with the train extra: training Jobs and the
#                                evaluator on CPU
#   localhost/vlf:cuda           with --cuda only: docker/Dockerfile.cuda (vLLM, DeepSpeed, torch's
#                                CUDA wheels) on the same base; not in CI (11 GB, ~16 min, ~20 GiB
#                                of disk while it builds)
# Users build the same Dockerfiles on the public base (`docker build -f docker/Dockerfile.cpu .`);
# here BASE_IMAGE points at the Debian-built one.
#
# Cached: the base image, each service image (skipped while the hash of its inputs, in its
# vlf.inputs label, is unchanged) and pip downloads (the host's pip cache is mounted into the
# build). Disk is the limit: building the 6.7 GB train image needs about three times its size free
# (the container's layer, buildah's commit copy, the stored layer), so a stale image is removed
# before its rebuild and the build refuses to start without the room. Prints each stage's seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_CACHE="${PIP_CACHE_DIR:-${HOME}/.cache/pip}"
BASE_IMAGE="localhost/vlf-base:bookworm"
mkdir -p "${PIP_CACHE}"

for tool in buildah podman mmdebstrap runc; do
  command -v "${tool}" >/dev/null || {
    echo "build-images: ${tool} is missing: run \`bash tests/install-debian-packages.sh\` (Debian packages)" >&2
    exit 1
  }
done

stage() { # stage NAME COMMAND...: runs COMMAND and prints its wall time
  local name="$1" start=${SECONDS}
  shift
  "$@"
  echo "build-images: ${name} took $((SECONDS - start)) s"
}

build_base() {
  if podman image exists "${BASE_IMAGE}"; then
    echo "${BASE_IMAGE}: present"
    return
  fi
  local rootfs
  rootfs="$(mktemp -d)/rootfs.tar"
  # passwd: groupadd/useradd for the image user; python3-venv: the Dockerfiles' venv.
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "${rootfs}"
  podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "${rootfs}" "${BASE_IMAGE}" >/dev/null
  rm -rf "$(dirname "${rootfs}")"
}

# The build sees the host's pip configuration and CA bundle (a proxy that re-signs TLS, a local
# index), mounted for the RUN steps only: neither ends up in an image.
host_mounts=(--volume "${PIP_CACHE}:/root/.cache/pip")
for file in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
  [ -f "${file}" ] && host_mounts+=(--volume "${file}:${file}:ro")
done

# The hash of everything a service image is built from: an image whose label carries it is current.
inputs_hash() {
  { echo "$1"; cat docker/Dockerfile.cpu pyproject.toml README.md LICENSE; git ls-files -z shared services vlf devkit | xargs -0 cat; } \
    | sha256sum | cut -c1-16
}

# require_free_gib GIB TAG: stops the build with the figures when podman's storage (and buildah's
# commit copy in /var/tmp) has less than GIB GiB free.
require_free_gib() {
  local need="$1" tag="$2" path free
  for path in "$(podman info --format '{{.Store.GraphRoot}}')" /var/tmp; do
    free=$(($(df --output=avail -k "${path}" | tail -1) / 1024 / 1024))
    if [ "${free}" -lt "${need}" ]; then
      echo "build-images: ${tag} needs about ${need} GiB free in ${path}; $(df -h --output=avail "${path}" | tail -1 | tr -d ' ') is free." >&2
      echo "build-images: free some (podman system prune --all; rm -rf ~/.cache/vlf/containerd) and rerun." >&2
      exit 1
    fi
  done
}

# build_service_image TAG EXTRAS NEED_GIB: buildah bud of docker/Dockerfile.cpu unless the tag is
# current. The stale image goes first, so its gigabytes are free for the new one.
build_service_image() {
  local tag="$1" extras="$2" need="$3" hash
  hash="$(inputs_hash "${extras}")"
  if [ "$(podman image inspect --format '{{index .Labels "vlf.inputs"}}' "${tag}" 2>/dev/null)" = "${hash}" ]; then
    echo "${tag}: current (inputs ${hash})"
  else
    podman image rm --force "${tag}" >/dev/null 2>&1 || true
    podman image prune --force >/dev/null
    require_free_gib "${need}" "${tag}"
    buildah bud --quiet --isolation chroot --format docker "${host_mounts[@]}" \
      --build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg "VLF_EXTRAS=${extras}" --label "vlf.inputs=${hash}" \
      -f docker/Dockerfile.cpu -t "${tag}" . >/dev/null
    podman image prune --force >/dev/null
  fi
  echo "${tag}: $(podman image inspect --format '{{.Size}}' "${tag}" | numfmt --to=iec)"
}

# build_cuda_image: docker/Dockerfile.cuda on the Debian base (its python3.11 instead of the Ubuntu
# base's python3.12). The wheels bring CUDA's libraries; a GPU node's driver must suit them.
build_cuda_image() {
  local tag=localhost/vlf:cuda
  podman image rm --force "${tag}" >/dev/null 2>&1 || true
  podman image prune --force >/dev/null
  require_free_gib 25 "${tag}"
  buildah bud --quiet --isolation chroot --format docker "${host_mounts[@]}" \
    --build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg PYTHON=python3.11 \
    -f docker/Dockerfile.cuda -t "${tag}" . >/dev/null
  podman image prune --force >/dev/null
  echo "${tag}: $(podman image inspect --format '{{.Size}}' "${tag}" | numfmt --to=iec)"
}

df -h "$(podman info --format '{{.Store.GraphRoot}}')" | sed 's/^/build-images: /'
stage "base image" build_base
stage "pause image" bash docker/pause/build-pause.sh
stage "localhost/vlf:cpu" build_service_image localhost/vlf:cpu data,postgres,kube 3
stage "localhost/vlf:cpu-train" build_service_image localhost/vlf:cpu-train train,postgres,kube 20
if [ "${1:-}" = "--cuda" ]; then
  stage "localhost/vlf:cuda" build_cuda_image
fi
