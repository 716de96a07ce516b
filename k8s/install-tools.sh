#!/usr/bin/env bash
# Builds the chart tooling (helm, kube-score) from the Go module proxy into a cache.
#
# Why go install: this project's machines reach package registries only, so release binaries
# cannot be downloaded; the Go module proxy serves the sources. Each tool is skipped when its
# binary is already in the cache, so a warm machine pays nothing.
#
# kube-linter (golang.stackrox.io/kube-linter) is not served by the Go module proxy here, so the
# chart is linted with kube-score instead (see k8s/kube-score-ignores.yaml).
#
# Kubernetes schemas come from the kubernetes-validate package in the project venv (offline,
# strict, pinned k8s version in the tests), so kubeconform is not needed.
set -euo pipefail

HELM_VERSION="v3.22.0"
KUBE_SCORE_VERSION="v1.20.0"

TOOLS_BIN="${VLF_TOOLS_BIN:-${HOME}/.cache/vlf/tools/bin}"
mkdir -p "${TOOLS_BIN}"

install_tool() {
  local name="$1" package="$2" version="$3"
  if [[ -x "${TOOLS_BIN}/${name}" ]]; then
    echo "${name}: present in ${TOOLS_BIN}"
    return
  fi
  echo "${name}: building ${package}@${version}"
  GOBIN="${TOOLS_BIN}" CGO_ENABLED=0 go install -trimpath -ldflags="-s -w" "${package}@${version}"
}

install_tool helm helm.sh/helm/v3/cmd/helm "${HELM_VERSION}"
install_tool kube-score github.com/zegl/kube-score/cmd/kube-score "${KUBE_SCORE_VERSION}"

"${TOOLS_BIN}/helm" version --short
"${TOOLS_BIN}/kube-score" version
