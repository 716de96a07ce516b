"""The chart installed with Helm on a real single-node Kubernetes (tests/cluster/node.py), running
the images docker/build-images.sh builds, against a Kafka broker, PostgreSQL and OpenAI-compatible
model and judge servers on the node's bridge address. One test, in stages, because each stage
needs the cluster the previous one left: install, pipeline, a sampler pod deleted mid-stream, a
training Job on a real PersistentVolume scored by the evaluator pod, and an upgrade adding a sampler.

What this node does not have, and the values work around: no kube-proxy or CoreDNS (every address
is the bridge IP; the trainer is told the API server's address), no GPU (the training Job runs the
CPU train image with gpus 0), no NetworkPolicy enforcement (the policies are created, not enforced).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.kafka_local import BrokerConfig, free_ports, start_broker, stop_broker
from devkit.openai_test_server import RunningServer, TestServerConfig, default_responder, serve_in_thread
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.settings import CommonSettings
from tests.cluster.node import Node, single_node
from tests.conftest import REPO_ROOT
from tests.integration.judge_responder import judge_responder
from tests.integration.kafka_helpers import consume_all
from tests.integration.pipeline_helpers import COLOURS, png
from tests.postgres_server import postgres_server
from vlf.status import kafka_numbers

IMAGES = ("localhost/vlf:cpu", "localhost/vlf:cpu-train")
TOOLS_BIN = Path(os.environ.get("VLF_TOOLS_BIN", Path.home() / ".cache" / "vlf" / "tools" / "bin"))
NAMESPACE = "vlf"
RELEASE = "vlf"
IMAGE_UID = 10001
MODEL_LATENCY_S = 0.3
SAMPLER_CONCURRENCY = 2
SMALL = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float, poll_s: float = 1.0) -> float:
    """Seconds until ``condition()`` held; fails the test with ``what`` after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}", pytrace=False)


class Cluster:
    """The node, the servers on its bridge and the release, with the helpers the stages share."""

    def __init__(self, node: Node, work: Path, bootstrap: str, ledger_url: str, servers: dict) -> None:
        self.node, self.work, self.servers = node, work, servers
        self.blobs, self.models, self.checkpoints = work / "blobs", work / "models", work / "checkpoints"
        self.values_path = work / "values.yaml"
        self.registry_path = work / "registry.yaml"
        self.settings = CommonSettings(
            kafka_bootstrap_servers=bootstrap,
            ledger_url=ledger_url,
            blob_url=str(self.blobs),
            registry_path=self.registry_path,
        )
        self.ledger = Ledger(ledger_url)
        self.submitted = 0

    # --- helm -------------------------------------------------------------------------------
    def values(self, sampler_ids: list[str]) -> dict:
        host, api_port = self.node.host_ip, self.node.api_port
        return {
            "common": {
                "image": {"registry": "localhost", "repository": "vlf", "tag": "cpu", "pullPolicy": "Never"},
                "gpuImage": {
                    "registry": "localhost",
                    "repository": "vlf",
                    "tag": "cpu-train",
                    "pullPolicy": "Never",
                },
                "kafka": {
                    "bootstrapServers": self.settings.kafka_bootstrap_servers,
                    "securityProtocol": "PLAINTEXT",
                },
                "ledger": {"url": self.settings.ledger_url, "existingSecret": ""},
                "blob": {"url": "file:///data/blobs"},
                "extraVolumes": [
                    {"name": "blobs", "hostPath": {"path": str(self.blobs), "type": "Directory"}},
                    {"name": "models", "hostPath": {"path": str(self.models), "type": "Directory"}},
                ],
                "extraVolumeMounts": [
                    {"name": "blobs", "mountPath": "/data/blobs"},
                    {"name": "models", "mountPath": "/models", "readOnly": True},
                ],
                "extraEnv": [
                    {"name": "VLF_COMMIT_INTERVAL_S", "value": "0.5"},
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {"name": "OMP_NUM_THREADS", "value": "1"},
                ],
            },
            "samplers": [
                {
                    "id": sid,
                    "backend": "openai",
                    "model": "test-model",
                    "baseUrl": self.servers[sid].base_url,
                    "sampling": {"temperature": 0.7, "max_tokens": 16},
                    "concurrency": SAMPLER_CONCURRENCY,
                    "resources": SMALL,
                }
                for sid in sampler_ids
            ],
            "judges": [
                {
                    "id": "judge",
                    "kind": "llm",
                    "backend": "openai",
                    "model": "test-model",
                    "baseUrl": self.servers["judge"].base_url,
                    "mode": "all_in_one",
                    "structuredOutput": False,
                    "apiKey": {"value": "sk-test-judge"},
                    "resources": SMALL,
                }
            ],
            "pairBuilder": {"resources": SMALL, "rule": {"heldoutFraction": 0.2}},
            "trainer": {
                "resources": SMALL,
                # No kube-proxy here: the `kubernetes` Service's ClusterIP routes nowhere.
                "extraEnv": [
                    {"name": "KUBERNETES_SERVICE_HOST", "value": host},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
                ],
                "job": {
                    "gpus": 0,
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "512Mi"},
                        "limits": {"memory": "6Gi"},
                    },
                    "shmSizeLimit": "256Mi",
                    "cacheSizeLimit": "1Gi",
                    "activeDeadlineSeconds": 1200,
                    "backoffLimit": 0,
                },
                "checkpoints": {"size": "1Gi", "accessMode": "ReadWriteOnce"},
            },
            "evaluator": {
                "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "4Gi"}},
                "cacheSizeLimit": "1Gi",
                "extraEnv": [
                    {"name": "VLF_EVALUATOR_AUTO_BENCHMARKS", "value": '["preference_accuracy"]'},
                    {"name": "VLF_EVALUATOR_BATCH_SIZE", "value": "4"},
                ],
            },
        }

    def helm(self, verb: str, sampler_ids: list[str]) -> float:
        """``helm install`` or ``helm upgrade`` with --wait; returns its seconds."""
        self.values_path.write_text(yaml.safe_dump(self.values(sampler_ids)))
        command = [
            str(TOOLS_BIN / "helm"), verb, RELEASE, str(REPO_ROOT / "k8s" / "vlf"),
            "--namespace", NAMESPACE, "--create-namespace", "--kubeconfig", str(self.node.kubeconfig),
            "-f", str(self.values_path), "--wait", "--timeout", "10m",
        ]  # fmt: skip
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(
                f"helm {verb} failed:\n{result.stdout}\n{result.stderr}\n{self.describe()}", pytrace=False
            )
        return time.monotonic() - start

    def write_registry(self, sampler_ids: list[str]) -> None:
        """The registry as the release's pods read it, rendered by Helm from the same values."""
        self.values_path.write_text(yaml.safe_dump(self.values(sampler_ids)))
        command = [
            str(TOOLS_BIN / "helm"), "template", RELEASE, str(REPO_ROOT / "k8s" / "vlf"),
            "--namespace", NAMESPACE, "-f", str(self.values_path), "--kube-version", "1.34.2",
            "--show-only", "templates/registry-configmap.yaml",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        self.registry_path.write_text(yaml.safe_load(result.stdout)["data"]["registry.yaml"])

    # --- pods -------------------------------------------------------------------------------
    def deployments(self) -> dict[str, tuple[int, int]]:
        """Deployment name -> (ready replicas, wanted replicas)."""
        items = self.node.apps_api().list_namespaced_deployment(NAMESPACE).items
        return {d.metadata.name: (d.status.ready_replicas or 0, d.spec.replicas) for d in items}

    def pods(self, component: str | None = None) -> list:
        selector = f"app.kubernetes.io/component={component}" if component else None
        return self.node.core_api().list_namespaced_pod(NAMESPACE, label_selector=selector).items

    def restarts(self) -> dict[str, int]:
        return {
            p.metadata.name: sum(s.restart_count for s in p.status.container_statuses or [])
            for p in self.pods()
        }

    def describe(self) -> str:
        """Pods, their states and the tail of each log: what a failure message needs."""
        lines = []
        try:
            for pod in self.pods():
                states = [
                    (s.name, s.ready, s.restart_count, s.state) for s in pod.status.container_statuses or []
                ]
                lines.append(f"{pod.metadata.name} {pod.status.phase} {states}")
                try:
                    log = self.node.core_api().read_namespaced_pod_log(
                        pod.metadata.name, NAMESPACE, tail_lines=20
                    )
                    lines.append(log)
                except Exception as exc:  # noqa: BLE001 - best effort in a failure message
                    lines.append(f"(no log: {exc})")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"(cluster unreadable: {exc})")
        return "\n".join(lines)

    # --- the pipeline -----------------------------------------------------------------------
    def submit(self, count: int) -> None:
        """``vlf submit`` of ``count`` new instructions, assigned to models by the host's registry."""
        folder = self.work / f"submit-{self.submitted}"
        folder.mkdir()
        lines = []
        for n in range(self.submitted, self.submitted + count):
            (folder / f"{n}.png").write_bytes(png(list(COLOURS)[n % 4]))
            lines.append({"prompt": f"Instruction {n}: what colour is the square?", "image": f"{n}.png"})
        (folder / "instructions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        env = {
            **os.environ,
            "VLF_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            "VLF_LEDGER_URL": self.settings.ledger_url,
            "VLF_BLOB_URL": str(self.blobs),
            "VLF_REGISTRY_PATH": str(self.registry_path),
        }
        result = subprocess.run(
            [sys.executable, "-m", "vlf.cli", "submit", str(folder / "instructions.jsonl")],
            env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )  # fmt: skip
        assert result.returncode == 0 and f"published {count} instructions" in result.stdout, (
            result.stdout + result.stderr
        )
        for path in self.blobs.rglob("*"):
            os.chown(path, IMAGE_UID, IMAGE_UID)
        self.submitted += count

    def instructions(self) -> list[ev.Instruction]:
        return [
            ev.Instruction.model_validate_json(r.value)
            for r in consume_all(self.settings.kafka_bootstrap_servers, topics.INSTRUCTIONS.name)
        ]

    def answered(self) -> int:
        return self.ledger.count(ev.Response)

    def pairs_settled(self) -> bool:
        lag = kafka_numbers(self.settings)[1]
        return lag.get("vlf-pair-builder") == 0 and lag.get("vlf-annotator.judge") == 0


def model_responder(model_id: str) -> Callable[[dict], str]:
    """Answers that differ between models (the default one depends on the prompt only), so the
    judge rates the two answers of an instruction differently and they make a pair."""
    return lambda request: f"{model_id}: {default_responder(request)}"


def model_calls(server: RunningServer) -> Counter:
    """Calls the server received, per instruction prompt."""
    calls = httpx.get(server.root_url + "/_calls").json()
    return Counter(call["first_user_text"] for call in calls)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cluster")
    work.chmod(0o755)
    with single_node(work / "node", list(IMAGES)) as node:
        for folder in ("blobs", "models", "checkpoints"):
            (work / folder).mkdir()
            os.chown(work / folder, IMAGE_UID, IMAGE_UID)
        from devkit.tinymodels import build_tiny_vlm

        build_tiny_vlm("qwen2_vl", work / "models" / "tiny-qwen", seed=0)
        for path in (work / "models").rglob("*"):
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        broker = BrokerConfig(host=node.host_ip, port=free_ports(2), data_dir=work / "kafka")
        bootstrap = start_broker(broker)
        servers = {
            sid: serve_in_thread(
                TestServerConfig(latency_s=MODEL_LATENCY_S, responder=model_responder(sid)), host=node.host_ip
            )
            for sid in ("model-a", "model-b", "model-c")
        }
        servers["judge"] = serve_in_thread(TestServerConfig(responder=judge_responder), host=node.host_ip)
        try:
            with postgres_server(host=node.host_ip, trust_cidr=node.pod_cidr) as ledger_url:
                node.create_host_path_volume(
                    "vlf-checkpoints", work / "checkpoints", "1Gi", ["ReadWriteOnce"]
                )
                yield Cluster(node, work, bootstrap, ledger_url, servers)
        finally:
            for server in servers.values():
                server.stop()
            stop_broker(broker)


@pytest.mark.timeout(1800)  # node start (image import), install, pipeline, Job, upgrade: ~7 min on 2 cores
def test_helm_install_runs_the_pipeline_on_a_real_node(cluster: Cluster, capsys):
    figures: dict[str, object] = {"node start (s)": round(cluster.node.started_in_s, 1)}

    # 1. Install: every Deployment Ready through its real probes, and nothing restarting.
    cluster.write_registry(["model-a", "model-b"])
    figures["helm install --wait (s)"] = round(cluster.helm("install", ["model-a", "model-b"]), 1)
    deployments = cluster.deployments()
    assert deployments and all(ready == wanted for ready, wanted in deployments.values()), deployments
    assert set(cluster.restarts().values()) == {0}, cluster.restarts()
    figures["deployments ready"] = len(deployments)

    # 2. Instructions submitted with `vlf submit` are answered, rated and paired by the pods.
    first = 12
    cluster.submit(first)
    figures["pipeline (s)"] = round(
        wait_for(f"{2 * first} answers", lambda: cluster.answered() == 2 * first, 300)
        + wait_for("every rating paired", cluster.pairs_settled, 120),
        1,
    )
    assert cluster.ledger.count(ev.Annotation) == first
    assert cluster.ledger.count(ev.Pair) > 0
    figures["instructions in / pairs out"] = f"{first} / {cluster.ledger.count(ev.Pair)}"

    # 3. A sampler pod deleted mid-stream: its replacement resumes from the committed offsets.
    second = 40
    calls_before = model_calls(cluster.servers["model-a"])
    [victim] = [
        p for p in cluster.pods("sampler") if p.metadata.name.startswith(f"{RELEASE}-sampler-model-a")
    ]
    cluster.submit(second)
    target = 2 * first + 2 * second
    wait_for(
        "model-a mid-stream",
        lambda: (
            sum(model_calls(cluster.servers["model-a"]).values()) - sum(calls_before.values()) >= second // 4
        ),
        120,
        0.2,
    )
    cluster.node.core_api().delete_namespaced_pod(victim.metadata.name, NAMESPACE)
    figures["answered when the pod was deleted"] = cluster.answered() - 2 * first
    wait_for(f"{target} answers after the deletion", lambda: cluster.answered() == target, 400)
    wait_for("every rating paired", cluster.pairs_settled, 120)
    responses = list(cluster.ledger.iter_facts(ev.Response))
    assert Counter((r.instruction_id, r.model_id) for r in responses).most_common(1)[0][1] == 1
    assert {(i.instruction_id, m) for i in cluster.instructions() for m in i.models} == {
        (r.instruction_id, r.model_id) for r in responses
    }
    on_topic = {
        json.loads(r.value)["response_id"]
        for r in consume_all(cluster.settings.kafka_bootstrap_servers, topics.RESPONSES.name)
    }
    assert on_topic == {r.response_id for r in responses}
    repeated = {k: n for k, n in model_calls(cluster.servers["model-a"]).items() if n > 1}
    figures["model-a calls repeated after the deletion"] = len(repeated)
    assert len(repeated) <= SAMPLER_CONCURRENCY, repeated
    replacement = [
        p for p in cluster.pods("sampler") if p.metadata.name.startswith(f"{RELEASE}-sampler-model-a")
    ]
    assert [p.metadata.name for p in replacement] != [victim.metadata.name]
    assert cluster.ledger.count(ev.Annotation) == first + second

    # 4. Training: the trainer pod creates a Job, the kubelet runs it to completion on the tiny model
    # with the checkpoint on the PersistentVolume, and the evaluator pod scores the checkpoint.
    env = {**os.environ, "VLF_KAFKA_BOOTSTRAP_SERVERS": cluster.settings.kafka_bootstrap_servers}
    result = subprocess.run(
        [sys.executable, "-m", "vlf.cli", "train", "/models/tiny-qwen", "--job-id", "cluster-1",
         "--judge", "judge", "--epochs", "1", "--max-steps", "2"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    start = time.monotonic()

    def job_done() -> bool:
        jobs = cluster.node.batch_api().list_namespaced_job(NAMESPACE).items
        ended = [c.type for j in jobs for c in j.status.conditions or [] if c.status == "True"]
        assert "Failed" not in ended, cluster.describe()
        return "Complete" in ended

    wait_for("the training Job to complete", job_done, 900, 2)
    figures["training Job (s)"] = round(time.monotonic() - start, 1)
    wait_for("the Checkpoint event", lambda: cluster.ledger.count(ev.Checkpoint) == 1, 120)
    [checkpoint] = cluster.ledger.iter_facts(ev.Checkpoint)
    assert (cluster.checkpoints / "cluster-1").is_dir()

    def scored() -> bool:
        return any(
            r.status == "completed" and r.model.name != "base"
            for r in cluster.ledger.iter_facts(ev.EvalResult)
        )

    wait_for("the evaluator's score of the checkpoint", scored, 600, 2)
    figures["checkpoint to score (s)"] = round(time.monotonic() - start - figures["training Job (s)"], 1)
    results = [r for r in cluster.ledger.iter_facts(ev.EvalResult) if r.status == "completed"]
    figures["evaluation"] = {r.model.name: r.metrics for r in results}
    assert checkpoint.job_id == "cluster-1"

    # 5. helm upgrade adding a sampler: its new consumer group reads the stream from the start, so
    # it answers the instructions assigned to it before it existed (submitted with the new
    # registry), and only those.
    early = 6
    cluster.write_registry(["model-a", "model-b", "model-c"])
    cluster.submit(early)
    target += 2 * early
    wait_for("model-a and model-b answers", lambda: cluster.answered() == target, 300)
    figures["helm upgrade --wait (s)"] = round(cluster.helm("upgrade", ["model-a", "model-b", "model-c"]), 1)
    wait_for("model-c answers", lambda: cluster.answered() == target + early, 300)
    late = {r.instruction_id for r in cluster.ledger.iter_facts(ev.Response) if r.model_id == "model-c"}
    assert late == {i.instruction_id for i in cluster.instructions() if "model-c" in i.models}
    assert len(late) == early and sum(model_calls(cluster.servers["model-c"]).values()) == early
    figures["model-c answers of earlier instructions"] = len(late)
    assert cluster.deployments()[f"{RELEASE}-sampler-model-c"] == (1, 1)
    with capsys.disabled():
        print("\ncluster figures:", json.dumps(figures, indent=2, default=str))
