"""The chart's defaults are the ones users trust: each test is a way a default could let them down.

Egress: no pod reaches the cloud metadata server, in any mode; a pod whose endpoints are all in the
cluster reaches nothing outside it; only a workload that needs the internet gets it. Kafka: SASL
over TLS unless the values say otherwise, and SASL without credentials refuses to install. The
trainer: a Role of the two calls it makes, and an admission policy pinning what its Jobs run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.k8s.egress import may_reach, pods
from tests.unit.k8s.test_chart import (
    COMPONENT,
    EXAMPLES,
    VALUES_FILES,
    helm,
    of_kind,
    render,
    render_text,
    training_job,
    write_values,
)

METADATA = ("169.254.169.254", "fd00:ec2::254")  # AWS, GCP, Azure (IPv4); AWS (IPv6)
INTERNET = "1.1.1.1"
NP = "common.networkPolicy"

IN_CLUSTER_ONLY: dict[str, Any] = {
    "common": {"blob": {"url": "file:///data/blobs"}, "networkPolicy": {"hubEgress": False}},
    "samplers": [
        {"id": "near", "backend": "openai", "model": "m", "baseUrl": "http://lvlm.models.svc:8000/v1"},
        {"id": "bare", "backend": "openai", "model": "m", "baseUrl": "http://lvlm-gateway:8000/v1"},
    ],
    "judges": [
        {
            "id": "local-judge",
            "backend": "openai",
            "model": "j",
            "baseUrl": "http://judge.models.svc.cluster.local/v1",
            "apiKey": {"existingSecret": "k"},
        },
        {
            "id": "openai",
            "backend": "openai",
            "model": "gpt-4o",
            "baseUrl": "https://api.openai.com/v1",
            "apiKey": {"existingSecret": "k"},
        },
        {"id": "rules", "kind": "verifiable"},
    ],
}


def labelled(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return dict(pods(objects))


MODES = {
    "default": ([], []),
    "dev-cpu": ([VALUES_FILES["dev-cpu"]], []),
    "prod-gpu": ([VALUES_FILES["prod-gpu"]], []),
    "every pod to the internet": ([VALUES_FILES["prod-gpu"]], [f"{NP}.allowExternalEgress=true"]),
    "hub off, blob in cluster": (
        [VALUES_FILES["prod-gpu"]],
        [f"{NP}.hubEgress=false", f"{NP}.blobInCluster=true"],
    ),
}


@pytest.mark.parametrize("mode", MODES)
def test_no_pod_reaches_the_cloud_metadata_server_in_any_mode(mode: str) -> None:
    """Its credentials are the node's (or the workload identity's): one SSRF away from a judge URL
    or an image URL, so no egress rule may reach it, DNS and "every pod to the internet" included."""
    files, sets = MODES[mode]
    objects = render(files, sets)
    for name, labels in pods(objects):
        for address in METADATA:
            for port in (80, 443, 53, 8080):
                for protocol in ("TCP", "UDP"):
                    assert not may_reach(objects, labels, address, port, protocol), (
                        f"{mode}: {name} reaches {address}:{port}/{protocol}"
                    )
        if mode == "every pod to the internet":
            assert may_reach(objects, labels, INTERNET, 443), (
                f"{name}: the switch must still open the internet"
            )


def test_a_pod_with_only_in_cluster_endpoints_gets_no_internet_egress(tmp_path: Path) -> None:
    objects = render([write_values(tmp_path, IN_CLUSTER_ONLY)])
    by_name = labelled(objects)
    inside = [name for name in by_name if "openai" not in name and not name.endswith("-trainer")]
    assert len(inside) == 7  # two samplers, two in-cluster judges, pair builder, evaluator, training Job
    for name in inside:
        for port in (80, 443, 9092, 5432):
            assert not may_reach(objects, by_name[name], INTERNET, port), f"{name} reaches the internet"
    assert may_reach(objects, by_name["training-job"], "10.0.0.53", 53, "UDP"), "DNS stays open"


def test_the_external_judge_reaches_the_internet_and_nothing_else_does(tmp_path: Path) -> None:
    objects = render([write_values(tmp_path, IN_CLUSTER_ONLY)])
    reaching = {name for name, labels in pods(objects) if may_reach(objects, labels, INTERNET, 80)}
    assert reaching == {"t-vlf-annotator-openai"}
    (policy,) = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["metadata"]["name"] == "t-vlf-internet-annotator-openai"
    ]
    assert (
        "https://api.openai.com/v1 is outside the cluster"
        in policy["metadata"]["annotations"]["vlf.io/egress-reason"]
    )


def test_the_trainer_reaches_only_the_api_server_ports_and_can_be_narrowed_to_its_address(
    tmp_path: Path,
) -> None:
    """The API server is no pod, so the trainer needs an address rule; its ports by default, the
    control plane's addresses once apiServerPeers names them."""
    objects = render([write_values(tmp_path, IN_CLUSTER_ONLY)])
    trainer = labelled(objects)["t-vlf-trainer"]
    assert may_reach(objects, trainer, "203.0.113.7", 443) and may_reach(
        objects, trainer, "203.0.113.7", 6443
    )
    assert not may_reach(objects, trainer, INTERNET, 80)
    narrowed = render(
        [write_values(tmp_path, IN_CLUSTER_ONLY)],
        [f"{NP}.apiServerPeers[0].ipBlock.cidr=203.0.113.0/28"],
    )
    trainer = labelled(narrowed)["t-vlf-trainer"]
    assert may_reach(narrowed, trainer, "203.0.113.7", 443)
    assert not may_reach(narrowed, trainer, INTERNET, 443)


def test_the_hub_and_a_cloud_bucket_open_the_internet_only_to_their_users() -> None:
    objects = render([VALUES_FILES["prod-gpu"]])
    components = {
        labels[COMPONENT] for _, labels in pods(objects) if may_reach(objects, labels, INTERNET, 443)
    }
    # the trainer service: the API server rule (port 443 anywhere until apiServerPeers is set)
    assert components == {
        "sampler",
        "annotator",
        "pair-builder",
        "training-job",
        "evaluator",
        "vllm",
        "trainer",
    }
    closed = render([VALUES_FILES["prod-gpu"]], [f"{NP}.hubEgress=false", f"{NP}.blobInCluster=true"])
    reaching = {labels[COMPONENT] for _, labels in pods(closed) if may_reach(closed, labels, INTERNET, 80)}
    assert reaching == {"annotator"}  # the GPT-4o judge; vLLM servers load weights from a volume now


# --- Kafka ------------------------------------------------------------------------------------------


def kafka_values(path: Path | None) -> dict[str, Any]:
    chart_defaults = yaml.safe_load((EXAMPLES.parent / "vlf" / "values.yaml").read_text())["common"]["kafka"]
    if path is None:
        return chart_defaults
    return {**chart_defaults, **(yaml.safe_load(path.read_text()).get("common", {}).get("kafka") or {})}


def test_kafka_defaults_to_sasl_over_tls_and_plaintext_is_only_the_dev_example() -> None:
    assert kafka_values(None)["securityProtocol"] == "SASL_SSL"
    examples = {
        path.name: kafka_values(path) for path in EXAMPLES.glob("*.yaml") if path.name != "strimzi-kafka.yaml"
    }
    plaintext = {name for name, kafka in examples.items() if kafka["securityProtocol"] == "PLAINTEXT"}
    assert plaintext == {"dev-cpu.yaml"}
    (deployment, *_) = of_kind(render([]), "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLF_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert "secretKeyRef" in env["VLF_KAFKA_SASL_PASSWORD"]["valueFrom"], "the password comes from a Secret"


@pytest.mark.parametrize(
    "sets",
    [
        ["common.kafka.existingSecret="],
        ["common.kafka.saslUsername="],
        ["common.kafka.securityProtocol=SASL_PLAINTEXT", "common.kafka.existingSecret="],
    ],
)
def test_sasl_without_credentials_refuses_to_install(sets: list[str]) -> None:
    result = render_text([], sets)
    assert result.returncode != 0
    assert "needs credentials: saslUsername and existingSecret" in result.stderr, result.stderr


# --- the trainer's permissions ----------------------------------------------------------------------


def test_the_trainer_may_only_create_and_list_jobs() -> None:
    """shared/k8s_jobs.py calls create_namespaced_job and list_namespaced_job, nothing else."""
    objects = render([VALUES_FILES["prod-gpu"]])
    (role,) = of_kind(objects, "Role")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "list"]}]
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")


def test_the_trainers_jobs_are_pinned_to_the_chart_template_by_an_admission_policy() -> None:
    objects = render([VALUES_FILES["prod-gpu"]])
    (policy,) = of_kind(objects, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "vlf"
    }
    (condition,) = policy["spec"]["matchConditions"]
    assert '"system:serviceaccount:vlf:t-vlf-trainer"' in condition["expression"]
    pod = training_job(objects)["spec"]["template"]["spec"]
    rules = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert f'"{pod["containers"][0]["image"]}"' in rules
    assert f'"{pod["serviceAccountName"]}"' in rules and pod["automountServiceAccountToken"] is False
    for guard in (
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "hostPath",
        "privileged",
        "runAsNonRoot",
        "c.command ==",
    ):
        assert guard in rules, guard
    (training_sa,) = [
        s for s in of_kind(objects, "ServiceAccount") if s["metadata"]["name"] == pod["serviceAccountName"]
    ]
    assert training_sa["automountServiceAccountToken"] is False
    bindings = of_kind(objects, "RoleBinding")
    assert all(s["name"] != pod["serviceAccountName"] for b in bindings for s in b["subjects"])


def test_the_policy_admits_the_hostpath_volumes_the_chart_itself_mounts(tmp_path: Path) -> None:
    volume = {"name": "blobs", "hostPath": {"path": "/srv/vlf/blobs", "type": "Directory"}}
    objects = render([write_values(tmp_path, {"common": {"extraVolumes": [volume]}})])
    (policy,) = of_kind(objects, "ValidatingAdmissionPolicy")
    (rule,) = [v for v in policy["spec"]["validations"] if "hostPath" in v["expression"]]
    assert rule["expression"].endswith('in ["/srv/vlf/blobs"])')


def test_the_policy_is_refused_on_clusters_without_it_unless_turned_off() -> None:
    args = ["template", "t", str(EXAMPLES.parent / "vlf"), "--kube-version", "1.29.0"]
    refused = helm(*args)
    assert refused.returncode != 0 and "needs Kubernetes 1.30 or later" in refused.stderr
    off = helm(*args, "--set", "trainer.jobPolicy.enabled=false")
    assert off.returncode == 0, off.stderr
    assert "ValidatingAdmissionPolicy" not in off.stdout
