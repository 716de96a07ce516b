"""The single-node cluster itself (tests/cluster/node.py), before any chart runs on it: a pod locked
down as the chart's are (uid 10001, read-only root filesystem, every capability dropped) passes an
HTTP readiness probe and answers the host on its pod IP, and a Job runs to completion, proving the
scheduler, the kubelet and the Job controller. The Job's pod calls the API server with its
ServiceAccount token and ca.crt, as the trainer does: that checks the token controller, the root CA
the controller manager publishes and the route from a pod to ``Node.host_ip``.

Uses the Debian base image (python3 only), so it needs no service image build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.cluster.node import Node, single_node

BASE_IMAGE = "localhost/vlf-base:bookworm"
LOCKED_DOWN = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
# Calls the API server as the pod's ServiceAccount, verifying its certificate with the pod's ca.crt.
API_CALL = """
import os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request(
    f"https://{os.environ['API_HOST']}:{os.environ['API_PORT']}/version",
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read()},
)
print(urllib.request.urlopen(request, context=context, timeout=10).status)
"""


def _wait_for(what: str, condition: Callable[[], bool], node: Node, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{node.log('kubelet')}", pytrace=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with single_node(tmp_path_factory.mktemp("node"), [BASE_IMAGE]) as started:
        print(f"single node ready in {started.started_in_s:.1f}s")
        yield started


def test_a_locked_down_pod_passes_its_probe_and_answers_the_host(node: Node) -> None:
    core = node.core_api()
    core.create_namespaced_pod(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
                "containers": [
                    {
                        "name": "web",
                        "image": BASE_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-m", "http.server", "8080"],
                        "workingDir": "/",
                        "securityContext": LOCKED_DOWN,
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    }
                ],
            },
        },
    )

    def ready() -> bool:
        statuses = core.read_namespaced_pod("web", "default").status.container_statuses or []
        return bool(statuses) and statuses[0].ready

    _wait_for("pod web to be Ready", ready, node)
    pod_ip = core.read_namespaced_pod("web", "default").status.pod_ip
    assert httpx.get(f"http://{pod_ip}:8080/", timeout=5).status_code == 200


def test_a_job_calls_the_api_server_as_its_service_account_and_completes(node: Node) -> None:
    batch = node.batch_api()
    batch.create_namespaced_job(
        "default",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 600,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
                        "containers": [
                            {
                                "name": "once",
                                "image": BASE_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python3", "-c", API_CALL],
                                "env": [
                                    {"name": "API_HOST", "value": node.host_ip},
                                    {"name": "API_PORT", "value": str(node.api_port)},
                                ],
                                "securityContext": LOCKED_DOWN,
                            }
                        ],
                    }
                },
            },
        },
    )

    def finished() -> bool:
        status = batch.read_namespaced_job("once", "default").status
        return bool(status.succeeded or status.failed)

    _wait_for("Job once to finish", finished, node)
    core = node.core_api()
    [pod] = core.list_namespaced_pod("default", label_selector="job-name=once").items
    log = core.read_namespaced_pod_log(pod.metadata.name, "default")
    assert batch.read_namespaced_job("once", "default").status.succeeded == 1, log
    assert log.strip() == "200"
