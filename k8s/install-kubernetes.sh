#!/usr/bin/env bash
# Builds a real single-node Kubernetes from the Go module proxy into the tools cache: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (containerd, runc and the CNI
# plugins come from Debian: k8s/install-node-packages.sh). tests/integration/control_plane.py runs
# the API server alone; tests/cluster/ runs the whole node.
#
# Why not `go install pkg@version`: both k8s.io/kubernetes and go.etcd.io/etcd/server/v3 carry
# replace directives in their go.mod (staging/ and ../api paths), which `go install` refuses.
# So each binary is built from a throwaway module that requires the upstream module and pins
# every replaced module to the published version of the same release.
#
# Idempotent: a binary is skipped when it is present and reports the pinned version. The Go module
# and build caches stay in their default locations, so a rebuild on a warm machine is quick.
set -euo pipefail

KUBERNETES_VERSION="v1.34.2"
ETCD_VERSION="v3.6.4" # the etcd release k8s.io/kubernetes v1.34.2 depends on

TOOLS_BIN="${VLF_TOOLS_BIN:-${HOME}/.cache/vlf/tools/bin}"
mkdir -p "${TOOLS_BIN}"

WORK_DIR="$(mktemp -d)"
trap 'rm -rf "${WORK_DIR}"' EXIT

# True when bin exists and its --version output contains expected. The output is captured first:
# `bin --version | grep -q` can fail under pipefail when grep exits early (SIGPIPE).
version_ok() {
  local bin="$1" expected="$2" out
  [[ -x "${bin}" ]] || return 1
  out="$("${bin}" --version 2>/dev/null)" || return 1
  [[ "${out}" == *"${expected}"* ]]
}

# Builds package@version from a throwaway module: go.mod gets the replace block from stdin, the
# requirements come from `go get` (the upstream module's own dependency graph), then `go build`.
build_from_module() {
  local out="$1" package="$2" version="$3" ldflags="$4"
  local name mod_dir
  name="$(basename "${out}")"
  mod_dir="${WORK_DIR}/${name}"
  mkdir -p "${mod_dir}"
  {
    echo "module vlf.local/build/${name}"
    echo
    echo "go 1.24.0"
    echo
    cat
  } >"${mod_dir}/go.mod"
  (
    cd "${mod_dir}"
    GOTOOLCHAIN=local go get "${package}@${version}" 2>&1 | { grep -v '^go: added ' || true; }
    CGO_ENABLED=0 GOTOOLCHAIN=local nice -n 10 go build -trimpath -ldflags="${ldflags}" -o "${out}.tmp" "${package}"
  )
  mv -f "${out}.tmp" "${out}"
}

# --- Kubernetes components ----------------------------------------------------------------------
# Every `k8s.io/X => ./staging/src/k8s.io/X` of k8s.io/kubernetes's go.mod becomes
# `k8s.io/X => k8s.io/X v0.Y.Z`; the components share one Go build cache, so the second and later
# cost a fraction of the first.
k8s_replaces() {
  local k8s_gomod staging_version
  k8s_gomod="$(go mod download -json k8s.io/kubernetes@"${KUBERNETES_VERSION}" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  staging_version="v0${KUBERNETES_VERSION#v1}" # v1.34.2 -> v0.34.2
  sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "${k8s_gomod}" \
    | { echo "replace ("; while read -r m; do echo "	${m} => ${m} ${staging_version}"; done; echo ")"; }
}

for component in kubelet kube-apiserver kube-scheduler kube-controller-manager; do
  if version_ok "${TOOLS_BIN}/${component}" "Kubernetes ${KUBERNETES_VERSION}"; then
    echo "${component}: ${KUBERNETES_VERSION} present in ${TOOLS_BIN}"
    continue
  fi
  echo "${component}: building k8s.io/kubernetes/cmd/${component}@${KUBERNETES_VERSION}"
  started=${SECONDS}
  k8s_replaces | build_from_module "${TOOLS_BIN}/${component}" \
    "k8s.io/kubernetes/cmd/${component}" "${KUBERNETES_VERSION}" \
    "-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} -X k8s.io/component-base/version.gitTreeState=clean"
  echo "${component}: built in $((SECONDS - started)) s"
done

# --- etcd -----------------------------------------------------------------------------------------
if version_ok "${TOOLS_BIN}/etcd" "etcd Version: ${ETCD_VERSION#v}"; then
  echo "etcd: ${ETCD_VERSION} present in ${TOOLS_BIN}"
else
  echo "etcd: building go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  # server/v3 replaces its sibling modules with ../ paths; pin them to the same release.
  build_from_module "${TOOLS_BIN}/etcd" go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" "-s -w" <<EOF
replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 ${ETCD_VERSION}
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 ${ETCD_VERSION}
)
EOF
fi

for component in kubelet kube-apiserver kube-scheduler kube-controller-manager; do
  "${TOOLS_BIN}/${component}" --version
done
etcd_version="$("${TOOLS_BIN}/etcd" --version)"
echo "${etcd_version%%$'\n'*}"

