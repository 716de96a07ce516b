"""A real Kubernetes control plane for tests: etcd and kube-apiserver, no kubelet, no controllers.

The binaries come from ``k8s/install-kubernetes.sh`` (``make tools``). Objects are stored, validated
and listed exactly as in a cluster, but nothing runs them: a test moves a Job to its end state by
writing its status, as the Job controller would.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.kafka_local import free_ports

TOOLS_BIN = Path(os.environ.get("VLF_TOOLS_BIN", Path.home() / ".cache" / "vlf" / "tools" / "bin"))
TOKEN = "vlf-test-admin-token"


@dataclass(frozen=True)
class ControlPlane:
    url: str
    kubeconfig: Path

    def batch_api(self):  # noqa: ANN201 - kubernetes.client.BatchV1Api
        from kubernetes import client, config

        return client.BatchV1Api(config.new_client_from_config(str(self.kubeconfig)))

    def core_api(self):  # noqa: ANN201 - kubernetes.client.CoreV1Api
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))

    def end_job(self, name: str, namespace: str, condition: str) -> None:
        """Write a Job's final status (``Complete`` or ``Failed``) as the Job controller would."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        api = self.batch_api()
        api.patch_namespaced_job_status(name, namespace, {"status": {"startTime": now, "active": 1}})
        first = "SuccessCriteriaMet" if condition == "Complete" else "FailureTarget"
        counts = {"succeeded": 1, "completionTime": now} if condition == "Complete" else {"failed": 1}
        conditions = [
            {
                "type": kind,
                "status": "True",
                "lastTransitionTime": now,
                "lastProbeTime": now,
                "reason": "Test",
            }
            for kind in (first, condition)
        ]
        api.patch_namespaced_job_status(
            name, namespace, {"status": {"active": 0, **counts, "conditions": conditions}}
        )


def _binary(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.is_file():
        pytest.fail(
            f"{name} is missing from {TOOLS_BIN}: run `bash k8s/install-kubernetes.sh`", pytrace=False
        )
    return path


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(
                url, verify=False, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2
            ).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


@contextmanager
def control_plane(work: Path, authorization_mode: str = "AlwaysAllow") -> Iterator[ControlPlane]:
    """etcd and kube-apiserver; ``authorization_mode="RBAC"`` enforces Roles (the admin user is in
    system:masters, so it may still do anything, impersonation included)."""
    etcd_bin, apiserver_bin = _binary("etcd"), _binary("kube-apiserver")
    work.mkdir(parents=True, exist_ok=True)
    client_port, peer_port = free_ports(), free_ports()
    api_port = free_ports()
    subprocess.run(
        ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True
    )
    (work / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    processes: list[subprocess.Popen] = []
    try:
        etcd_log = work / "etcd.log"
        processes.append(
            subprocess.Popen(
                [str(etcd_bin), "--name", "test", "--data-dir", str(work / "etcd"),
                 "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"test={peer_url}", "--unsafe-no-fsync", "--log-level", "warn"],
                stdout=etcd_log.open("wb"), stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        _wait_ready(etcd_url + "/health", processes[0], etcd_log)
        api_log = work / "apiserver.log"
        processes.append(
            subprocess.Popen(
                [str(apiserver_bin), "--etcd-servers", etcd_url, "--bind-address", "127.0.0.1",
                 "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
                 "--cert-dir", str(work / "certs"), "--service-cluster-ip-range", "10.0.0.0/24",
                 "--authorization-mode", authorization_mode, "--token-auth-file", str(work / "tokens.csv"),
                 "--service-account-issuer", "https://kubernetes.default.svc",
                 "--service-account-key-file", str(work / "sa.key"),
                 "--service-account-signing-key-file", str(work / "sa.key"),
                 "--disable-admission-plugins", "ServiceAccount"],
                stdout=api_log.open("wb"), stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        url = f"https://127.0.0.1:{api_port}"
        _wait_ready(url + "/readyz", processes[1], api_log)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": url,
                                "certificate-authority": str(work / "certs" / "apiserver.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                    "current-context": "test",
                }
            )
        )
        yield ControlPlane(url, kubeconfig)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
