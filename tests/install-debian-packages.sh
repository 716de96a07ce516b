#!/usr/bin/env bash
# Installs the Debian packages the tests use, each only when missing (idempotent):
# - chromium: the report browser test renders the HTML report headless;
# - postgresql: the ledger tests start their own PostgreSQL server (tests/postgres_server.py);
# - buildah, podman, runc, mmdebstrap: docker/build-images.sh builds and runs the images without a
#   Docker daemon (crun fails on hybrid cgroups, so runc);
# - containerd, CNI plugins, iptables, conntrack: the single-node cluster (tests/cluster/node.py).
# Run as root, or with sudo available: `bash tests/install-debian-packages.sh`.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
for tool in buildah podman runc mmdebstrap containerd iptables conntrack; do
  command -v "${tool}" >/dev/null || missing+=("${tool}")
done
[ -x /usr/sbin/newuidmap ] || missing+=(uidmap)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)

if [ ${#missing[@]} -eq 0 ]; then
  echo "test packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
