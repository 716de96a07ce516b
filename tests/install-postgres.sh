#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the ledger tests on PostgreSQL (idempotent); the
# tests start and stop their own server (tests/postgres_server.py).
# Run as root, or with sudo available: `bash tests/install-postgres.sh`.
set -euo pipefail

if command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "postgresql already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends postgresql
