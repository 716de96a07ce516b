"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, started on a free loopback
port with trust auth, stopped and removed at the end. The ledger's PostgreSQL path (the production
database) runs the same tests as SQLite against it.

The binaries come from the machine (Debian's ``postgresql`` package; ``.ci/run`` installs it when
missing). PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devkit.kafka_local import free_ports


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's versioned folder."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL binaries not found: install Debian's postgresql package")
    return Path(found[-1]).parent


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stderr or result.stdout
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {output}")


@contextmanager
def postgres_server(host: str = "127.0.0.1", trust_cidr: str | None = None) -> Iterator[str]:
    """Yields a SQLAlchemy URL of an empty database on a fresh server listening on ``host``.

    ``trust_cidr`` lets clients of that network in without a password too (pods on a node's bridge);
    initdb's trust rules cover loopback only.
    """
    bin_dir = postgres_bin_dir()
    work = Path(tempfile.mkdtemp(prefix="vlf-postgres-"))
    data = work / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(work, user.pw_uid, user.pw_gid)
    port = free_ports()
    options = f"-p {port} -c listen_addresses={host} -c unix_socket_directories='' -c fsync=off"
    try:
        _run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "vlf"]))
        if trust_cidr:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust_cidr} trust\n")
        pg_ctl, log = str(bin_dir / "pg_ctl"), str(work / "log")
        _run(_as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", log, "-w", "start"]))
        yield f"postgresql+psycopg://vlf@{host}:{port}/postgres"
    finally:
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)
