"""The Helm chart, checked offline: lint, render, Kubernetes schemas, kube-score, and what users rely on.

Tools come from k8s/install-tools.sh (~/.cache/vlf/tools/bin); a missing tool fails the suite with
the command to run, it is never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.contracts.topics import annotator_group, sampler_group
from shared.registry import Registry
from tests.unit.k8s.crd_schemas import CRD_SCHEMAS
from tests.unit.settings_env import service_env_names

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "k8s" / "vlf"
EXAMPLES = REPO / "k8s" / "examples"
TOOLS_BIN = Path(os.environ.get("VLF_TOOLS_BIN", Path.home() / ".cache" / "vlf" / "tools" / "bin"))
KUBE_VERSION = "1.31.0"
NAMESPACE = "vlf"
VALUES_FILES = {"default": None, "dev-cpu": EXAMPLES / "dev-cpu.yaml", "prod-gpu": EXAMPLES / "prod-gpu.yaml"}
COMPONENT = "app.kubernetes.io/component"
GPU = "nvidia.com/gpu"


def tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.is_file():
        pytest.fail(
            f"{name} is missing from {TOOLS_BIN}: run `bash k8s/install-tools.sh` first", pytrace=False
        )
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, timeout=120)


def render_text(values: list[Path], sets: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    args = ["template", "t", str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", str(path)]
    for item in sets or []:
        args += ["--set", item]
    return helm(*args)


def render(values: list[Path], sets: list[str] | None = None) -> list[dict[str, Any]]:
    result = render_text(values, sets)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render([path] if path else []) for name, path in VALUES_FILES.items()}


def of_kind(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (component is None or o["metadata"]["labels"].get(COMPONENT) == component)
    ]


def training_job(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-trainer-job")
    ]
    return yaml.safe_load(configmap["data"]["job.yaml"])


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod the release runs: Deployments and the training Job template."""
    for deployment in of_kind(objects, "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
    yield "training-job", training_job(objects)["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def validate_object(obj: dict[str, Any]) -> None:
    crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        jsonschema.validate(obj, crd_schema)
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# --- lint and schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES_FILES)
def test_helm_lint_is_clean(name: str) -> None:
    path = VALUES_FILES[name]
    result = helm(
        "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *(["-f", str(path)] if path else [])
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_rendered_object_matches_the_pinned_kubernetes_schemas(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[name]
    for obj in [*objects, training_job(objects)]:
        try:
            validate_object(obj)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {error.message}")


def test_strimzi_example_matches_the_crd_schemas() -> None:
    objects = [d for d in yaml.safe_load_all((EXAMPLES / "strimzi-kafka.yaml").read_text()) if d]
    for obj in objects:
        jsonschema.validate(obj, CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
    topics = {o["spec"]["topicName"] for o in objects if o["kind"] == "KafkaTopic"}
    base = {
        f"vlf.{name}.v1"
        for name in ("instructions", "responses", "annotations", "pairs", "train.requests", "train.progress")
        + ("checkpoints", "eval.requests", "eval.results")
    }
    assert topics == base | {f"{t}.dlq" for t in base}


def test_values_schema_rejects_a_misspelt_key() -> None:
    result = render_text([], ["common.kafka.bootstrapServer=kafka:9092"])
    assert result.returncode != 0
    assert "bootstrapServer" in result.stderr


def kube_score_ignores() -> list[str]:
    """Each ignored kube-score check, justified in k8s/kube-score-ignores.yaml."""
    entries = yaml.safe_load((REPO / "k8s" / "kube-score-ignores.yaml").read_text())["ignore"]
    for entry in entries:
        assert len(entry.get("why", "")) > 20, f"{entry['test']} has no justification"
    return [entry["test"] for entry in entries]


@pytest.mark.parametrize("name", VALUES_FILES)
def test_kube_score_has_no_unexplained_finding(name: str, tmp_path: Path) -> None:
    path = VALUES_FILES[name]
    manifest = render_text([path] if path else [])
    assert manifest.returncode == 0, manifest.stderr
    job_manifest = tmp_path / "manifest.yaml"
    job_manifest.write_text(
        manifest.stdout + "\n---\n" + yaml.safe_dump(training_job(render([path] if path else [])))
    )
    args = [str(tool("kube-score")), "score", "--output-format", "ci", "--kubernetes-version", "v1.31"]
    for check in kube_score_ignores():
        args += ["--ignore-test", check]
    result = subprocess.run([*args, str(job_manifest)], capture_output=True, text=True, timeout=120)
    findings = [line for line in result.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))]
    assert findings == [], "\n".join(findings)
    assert result.returncode == 0, result.stdout + result.stderr


# --- samplers, GPUs and consumer groups ------------------------------------------------------------


def three_samplers() -> dict[str, Any]:
    sampling = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 1}
    return {
        "samplers": [
            {
                "id": "cpu-http",
                "backend": "openai",
                "model": "m1",
                "baseUrl": "http://lvlm:8000/v1",
                "sampling": sampling,
                "chatTemplate": "{% for m in messages %}{{ m['content'] }}{% endfor %}\n",
            },
            {
                "id": "gpu-vllm",
                "backend": "openai",
                "model": "org/m2",
                "vllm": {"enabled": True, "gpus": 2},
                "imageUrlBase": "https://cdn.example.com/vlf-blobs",
            },
            {"id": "gpu-inproc", "backend": "transformers", "model": "org/m3", "gpus": 1},
        ]
    }


def test_three_samplers_render_three_deployments_with_distinct_consumer_groups(tmp_path: Path) -> None:
    """Each sampler Deployment serves one model, so its pods join that model's consumer group."""
    objects = render([write_values(tmp_path, three_samplers())])
    deployments = of_kind(objects, "Deployment", "sampler")
    envs = [env_of(d["spec"]["template"]["spec"]["containers"][0]) for d in deployments]
    assert sorted(e["VLF_SAMPLER_MODEL_ID"] for e in envs) == ["cpu-http", "gpu-inproc", "gpu-vllm"]
    assert len({d["metadata"]["name"] for d in deployments}) == 3
    registry = Registry.model_validate(registry_of(objects))
    assert registry.model("gpu-vllm").image_url_base == "https://cdn.example.com/vlf-blobs"
    assert registry.model("cpu-http").image_url_base is None


def test_a_samplers_chat_template_is_mounted_where_its_registry_entry_points(tmp_path: Path) -> None:
    values = three_samplers()
    objects = render([write_values(tmp_path, values)])
    template_path = Path(Registry.model_validate(registry_of(objects)).model("cpu-http").chat_template)
    configmap = registry_configmap(objects)
    (deployment,) = [
        d
        for d in of_kind(objects, "Deployment", "sampler")
        if d["metadata"]["labels"]["vlf.io/id"] == "cpu-http"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [
        m for m in pod["containers"][0]["volumeMounts"] if str(template_path).startswith(m["mountPath"])
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert template_path.parent == Path(mount["mountPath"])
    assert configmap["data"][template_path.name] == values["samplers"][0]["chatTemplate"]
    assert registry_of(objects)["models"][1].get("chat_template") is None


def test_gpu_pods_get_gpus_and_the_gpu_pool_and_cpu_pods_do_not(tmp_path: Path) -> None:
    objects = render([write_values(tmp_path, three_samplers())])
    by_id = {
        d["metadata"]["labels"]["vlf.io/id"]: d["spec"]["template"]["spec"]
        for d in of_kind(objects, "Deployment", "sampler")
    }
    (vllm,) = of_kind(objects, "Deployment", "vllm")
    vllm_pod = vllm["spec"]["template"]["spec"]
    assert vllm["metadata"]["labels"]["vlf.io/id"] == "gpu-vllm"
    gpu_pods = {"vllm gpu-vllm": (vllm_pod, 2), "sampler gpu-inproc": (by_id["gpu-inproc"], 1)}
    for name, (pod, gpus) in gpu_pods.items():
        resources = pod["containers"][0]["resources"]
        assert resources["limits"][GPU] == gpus and resources["requests"][GPU] == gpus, name
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert any(t["key"] == GPU for t in pod["tolerations"]), name
    assert "vlf-cuda" in by_id["gpu-inproc"]["containers"][0]["image"]
    for cpu_id in ("cpu-http", "gpu-vllm"):  # the sampler in front of a vLLM server needs no GPU itself
        pod = by_id[cpu_id]
        container = pod["containers"][0]
        assert GPU not in container["resources"]["limits"] and GPU not in container["resources"]["requests"]
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert "vlf-cuda" not in container["image"]


def test_vllm_server_runs_the_model_with_tensor_parallelism_and_memory_shm(tmp_path: Path) -> None:
    objects = render([write_values(tmp_path, three_samplers())])
    (vllm,) = of_kind(objects, "Deployment", "vllm")
    pod = vllm["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--model=org/m2" in args and "--served-model-name=org/m2" in args
    assert "--tensor-parallel-size=2" in args and "--max-model-len=4096" in args
    assert pod["containers"][0]["image"].startswith("vllm/vllm-openai:v")
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    (service,) = of_kind(objects, "Service", "vllm")
    registry = registry_of(objects)
    (model,) = [m for m in registry["models"] if m["id"] == "gpu-vllm"]
    assert model["base_url"] == f"http://{service['metadata']['name']}:8000/v1"


def registry_configmap(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-registry")
    ]
    return configmap


def registry_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(registry_configmap(objects)["data"]["registry.yaml"])


def test_registry_configmap_carries_every_model_and_judge(rendered: dict[str, list[dict[str, Any]]]) -> None:
    registry = registry_of(rendered["prod-gpu"])
    assert [m["id"] for m in registry["models"]] == [
        "llava-1.5-7b",
        "llava-1.5-13b",
        "qwen2-vl-7b",
        "idefics2-8b",
    ]
    assert registry["models"][0]["sampling"] == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 512,
        "seed": 42,
    }
    gpt, verifiable = registry["judges"]
    assert gpt["mode"] == "all_in_one" and gpt["api_key_env"] == "VLF_API_KEY_GPT_4O"
    assert verifiable == {"id": "verifiable", "kind": "verifiable"}


def test_a_judges_cached_price_and_batch_mode_reach_the_registry(tmp_path: Path) -> None:
    judge = {
        "id": "bulk",
        "backend": "openai",
        "model": "gpt-4o",
        "baseUrl": "https://api.openai.com/v1",
        "apiKey": {"existingSecret": "vlf-judge-openai"},
        "pricePer1kInput": 0.0025,
        "pricePer1kCachedInput": 0.00125,
        "pricePer1kOutput": 0.01,
        "batch": True,
        "batchPriceRatio": 0.4,
    }
    registry = Registry.model_validate(registry_of(render([write_values(tmp_path, {"judges": [judge]})])))
    entry = registry.judge("bulk")
    assert (entry.price_per_1k_cached_input, entry.batch, entry.batch_price_ratio) == (0.00125, True, 0.4)
    default = Registry.model_validate(registry_of(render([]))).judge("gpt-4o")
    assert (default.price_per_1k_cached_input, default.batch, default.batch_price_ratio) == (None, False, 0.5)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_the_rendered_registry_is_one_every_service_accepts(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """Every service validates the registry at start-up (unknown keys are refused): a key the
    chart writes that the registry does not define would stop every pod of the release."""
    Registry.model_validate(registry_of(rendered[name]))


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_vlf_variable_the_chart_sets_is_read_by_a_service(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """A ``VLF_*`` name no settings class defines is dropped without a word; API keys are read
    under the names the registry gives them."""
    registry = registry_of(rendered[name])
    api_key_names = {entry.get("api_key_env") for entry in registry["models"] + registry["judges"]}
    known = service_env_names() | api_key_names
    unread = {
        (pod, variable)
        for pod, spec in pod_specs(rendered[name])
        for container in spec["containers"] + spec.get("initContainers", [])
        for variable in env_of(container)
        if variable.startswith("VLF_") and variable not in known
    }
    assert not unread


# --- hardening of every container ------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_container_is_probed_bounded_and_locked_down(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for pod_name, pod in pod_specs(rendered[name]):
        assert pod["securityContext"]["runAsNonRoot"] is True, pod_name
        mounted_tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            where = f"{pod_name}/{container['name']}"
            if pod_name != "training-job":  # a Job's container has no traffic to be ready for
                assert "livenessProbe" in container and "readinessProbe" in container, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in mounted_tmp, f"{where}: /tmp must be a writable emptyDir"


def test_service_probes_use_healthz_for_liveness_and_readyz_for_readiness(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    services = [
        d for d in of_kind(rendered["prod-gpu"], "Deployment") if d["metadata"]["labels"][COMPONENT] != "vllm"
    ]
    assert len(services) == 4 + 2 + 3
    for deployment in services:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["command"][:2] == ["python", "-m"]
        # The kubelet probes the pod's address: a server on loopback fails every probe.
        assert env_of(container)["VLF_HTTP_HOST"] == "0.0.0.0"


def test_extra_volumes_reach_every_service_pod_and_the_training_job(tmp_path: Path) -> None:
    volume = {"name": "blobs", "nfs": {"server": "nfs.example", "path": "/vlf"}}
    mount = {"name": "blobs", "mountPath": "/data/blobs"}
    objects = render(
        [write_values(tmp_path, {"common": {"extraVolumes": [volume], "extraVolumeMounts": [mount]}})]
    )
    pods = dict(pod_specs(objects))
    assert "training-job" in pods and len(pods) > 5
    for pod_name, pod in pods.items():
        assert volume in pod["volumes"], pod_name
        assert all(mount in c["volumeMounts"] for c in pod["containers"]), pod_name


# --- validation ------------------------------------------------------------------------------------


def test_validate_values_reports_every_bad_value_at_once(tmp_path: Path) -> None:
    bad = {
        "common": {
            "kafka": {"bootstrapServers": "", "existingSecret": ""},
            "ledger": {"url": "", "existingSecret": ""},
        },
        "vllm": {"image": {"tag": ""}},
        "samplers": [
            {"id": "a", "backend": "openai", "model": "m", "baseUrl": "http://x/v1"},
            {"id": "a", "backend": "openai", "model": "m", "baseUrl": "http://x/v1"},
            {"id": "g", "backend": "openai", "model": "m", "vllm": {"enabled": True, "gpus": 1}},
        ],
        "judges": [{"id": "j", "backend": "openai", "model": "gpt", "baseUrl": "https://api/v1"}],
        "evaluator": {"replicaCount": 2},
    }
    result = render_text([write_values(tmp_path, bad)])
    assert result.returncode != 0
    for message in (
        "common.kafka.bootstrapServers: required",
        "common.kafka: securityProtocol SASL_SSL needs credentials",
        "common.ledger: set url or existingSecret",
        "samplers[1] (a): duplicate sampler id",
        "samplers[2] (g): vllm.enabled needs vllm.image.repository and vllm.image.tag",
        "judges[0] (j).apiKey: set value or existingSecret",
        "evaluator.replicaCount: at most 1",
    ):
        assert message in result.stderr, f"{message!r} missing from:\n{result.stderr}"


def test_secrets_are_made_from_values_unless_existing(tmp_path: Path) -> None:
    values = {
        "common": {"ledger": {"url": "postgresql+psycopg://u:p@db/vlf", "existingSecret": ""}},
        "judges": [
            {
                "id": "j",
                "backend": "openai",
                "model": "gpt",
                "baseUrl": "https://api/v1",
                "apiKey": {"value": "sk-1"},
            }
        ],
    }
    objects = render([write_values(tmp_path, values)])
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind(objects, "Secret")}
    assert secrets["t-vlf-ledger"] == {"url": "postgresql+psycopg://u:p@db/vlf"}
    assert secrets["t-vlf-api-keys"] == {"VLF_API_KEY_J": "sk-1"}
    (annotator,) = of_kind(objects, "Deployment", "annotator")
    env = env_of(annotator["spec"]["template"]["spec"]["containers"][0])
    assert env["VLF_API_KEY_J"] == {"secretKeyRef": {"name": "t-vlf-api-keys", "key": "VLF_API_KEY_J"}}
    assert env["VLF_LEDGER_URL"] == {"secretKeyRef": {"name": "t-vlf-ledger", "key": "url"}}
    assert not of_kind(render([]), "Secret"), "defaults use existing Secrets only"


def test_kafka_sasl_ssl_settings_reach_every_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for _, pod in pod_specs(rendered["prod-gpu"]):
        if pod["containers"][0]["name"] == "vllm":
            continue
        env = env_of(pod["containers"][0])
        assert env["VLF_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["VLF_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["VLF_KAFKA_SASL_PASSWORD"] == {
            "secretKeyRef": {"name": "vlf-kafka-user", "key": "password"}
        }
        assert env["VLF_KAFKA_SSL_CAFILE"] == "/etc/vlf/kafka-ca/ca.crt"


# --- trainer, autoscaling, monitoring --------------------------------------------------------------


def test_trainer_may_manage_jobs_and_its_job_template_trains_on_eight_gpus(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod-gpu"]
    (role,) = of_kind(objects, "Role")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "list"]}]
    (trainer,) = of_kind(objects, "Deployment", "trainer")
    assert trainer["spec"]["template"]["spec"]["serviceAccountName"] == role["metadata"]["name"]
    job = training_job(objects)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["accelerate", "launch"]
    assert container["command"][-4:] == ["-m", "services.trainer.job", "--job-id", "$(VLF_TRAINER_JOB_ID)"]
    assert container["resources"]["limits"][GPU] == 8
    (configmap,) = [o for o in objects if o["metadata"]["name"].endswith("-trainer-job")]
    accelerate = yaml.safe_load(configmap["data"]["accelerate.yaml"])
    assert accelerate["distributed_type"] == "DEEPSPEED" and accelerate["deepspeed_config"]["zero_stage"] == 2
    assert accelerate["num_processes"] == 8
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert (
        volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
        == of_kind(objects, "PersistentVolumeClaim")[0]["metadata"]["name"]
    )


def test_the_evaluator_reads_checkpoints_where_the_training_jobs_write_them(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A Checkpoint event names file:///checkpoints/...: without the trainer's volume every one of
    them was dead-lettered as missing."""
    objects = rendered["prod-gpu"]
    job_pod = training_job(objects)["spec"]["template"]["spec"]
    (evaluator,) = of_kind(objects, "Deployment", "evaluator")
    evaluator_pod = evaluator["spec"]["template"]["spec"]

    def checkpoints(pod: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        (claim,) = [v["persistentVolumeClaim"] for v in pod["volumes"] if v["name"] == "checkpoints"]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "checkpoints"]
        return claim["claimName"], mount

    job_claim, job_mount = checkpoints(job_pod)
    evaluator_claim, evaluator_mount = checkpoints(evaluator_pod)
    assert evaluator_claim == job_claim
    assert (
        evaluator_mount["mountPath"]
        == job_mount["mountPath"]
        == env_of(job_pod["containers"][0])["VLF_TRAINER_CHECKPOINT_DIR"]
    )
    assert evaluator_mount["readOnly"] is True


def test_no_two_evaluator_pods_run_one_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Its jobs are child processes of the pod, unseen by another pod: an update starts no new pod
    before the old one is gone (and ``validate`` refuses more than one replica)."""
    (evaluator,) = of_kind(rendered["prod-gpu"], "Deployment", "evaluator")
    no_surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert evaluator["spec"]["strategy"] == no_surge
    assert evaluator["spec"]["replicas"] == 1


def test_the_trainer_launches_runs_from_the_mounted_job_template_as_valid_jobs(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from services.trainer.__main__ import TRAINER_JOB_ID_ENV
    from shared.k8s_jobs import JOB_ID_ANNOTATION, KubernetesJobLauncher

    objects = rendered["prod-gpu"]
    (trainer,) = of_kind(objects, "Deployment", "trainer")
    pod = trainer["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["VLF_TRAINER_LAUNCHER"] == "kubernetes"
    assert env["VLF_TRAINER_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "job-template")
    assert Path(env["VLF_TRAINER_JOB_TEMPLATE_PATH"]).parent == Path(mount["mountPath"])
    template = tmp_path / "job.yaml"
    (configmap,) = [o for o in objects if o["metadata"]["name"].endswith("-trainer-job")]
    template.write_text(configmap["data"]["job.yaml"])

    created: list[dict[str, Any]] = []

    class RecordingApi:  # stands in for the API server: this test checks the manifests only
        def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> None:
            created.append(body)

    launcher = KubernetesJobLauncher(template, NAMESPACE, TRAINER_JOB_ID_ENV, api=RecordingApi())
    launcher.start("dpo-run/2026-11 silkie", 1)
    launcher.start("dpo-run/2026-11 silkie", 2)
    first, second = created
    for job in created:
        validate_object(job)
        assert len(job["metadata"]["name"]) <= 63 and "generateName" not in job["metadata"]
        assert (
            job["spec"]["template"]["metadata"]["annotations"][JOB_ID_ANNOTATION] == "dpo-run/2026-11 silkie"
        )
        assert env_of(job["spec"]["template"]["spec"]["containers"][0])[TRAINER_JOB_ID_ENV] == (
            "dpo-run/2026-11 silkie"
        )
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["name"].startswith(training_job(objects)["metadata"]["generateName"])


def test_the_pair_rule_in_values_reaches_the_pair_builder_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pair_builder.settings import PairBuilderSettings

    rule = {
        "strategy": "min_margin",
        "minMargin": 1.5,
        "maxPairsPerInstruction": 3,
        "judgeIds": ["gpt4v", "verify"],
        "heldoutFraction": 0.01,
        "seed": 7,
    }
    objects = render([write_values(tmp_path, {"pairBuilder": {"rule": rule}})])
    (deployment,) = of_kind(objects, "Deployment", "pair-builder")
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    for name, value in env.items():
        if name.startswith("VLF_PAIRS_"):
            monkeypatch.setenv(name, value)
    settings = PairBuilderSettings()
    assert (settings.strategy, settings.min_margin, settings.max_pairs_per_instruction) == (
        "min_margin",
        1.5,
        3,
    )
    assert settings.judge_ids == ["gpt4v", "verify"]
    assert (settings.heldout_fraction, settings.seed) == (0.01, 7)
    (default,) = of_kind(render([]), "Deployment", "pair-builder")
    default_env = env_of(default["spec"]["template"]["spec"]["containers"][0])
    assert "VLF_PAIRS_MAX_PAIRS_PER_INSTRUCTION" not in default_env and "VLF_PAIRS_QUORUM" not in default_env


def test_an_agreement_quorum_in_values_reaches_the_pair_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.pair_builder.rules import PairRule
    from services.pair_builder.settings import PairBuilderSettings

    rule = {"strategy": "agreement", "judgeIds": ["gpt4v", "qwen", "human"], "quorum": 2}
    objects = render([write_values(tmp_path, {"pairBuilder": {"rule": rule}})])
    (deployment,) = of_kind(objects, "Deployment", "pair-builder")
    for name, value in env_of(deployment["spec"]["template"]["spec"]["containers"][0]).items():
        if name.startswith("VLF_PAIRS_"):
            monkeypatch.setenv(name, value)
    assert PairBuilderSettings().rule() == PairRule(
        strategy="agreement", judge_ids=("gpt4v", "qwen", "human"), quorum=2
    )


def test_keda_scales_each_sampler_and_judge_on_its_own_consumer_group(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod-gpu"]
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]: o["spec"]["triggers"][0]["metadata"]
        for o in of_kind(objects, "ScaledObject")
    }
    consumers = [
        d
        for d in of_kind(objects, "Deployment")
        if d["metadata"]["labels"][COMPONENT] in ("sampler", "annotator")
    ]
    assert len(consumers) == 6 and set(scaled) == {d["metadata"]["name"] for d in consumers}
    for deployment in consumers:
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        trigger = scaled[deployment["metadata"]["name"]]
        group = (
            sampler_group(env["VLF_SAMPLER_MODEL_ID"])
            if "VLF_SAMPLER_MODEL_ID" in env
            else annotator_group(env["VLF_ANNOTATOR_JUDGE_ID"])
        )
        assert trigger["consumerGroup"] == group, "KEDA must watch the group the service joins"
        assert (trigger["sasl"], trigger["tls"]) == ("scram_sha512", "enable")
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_monitoring_renders_alerts_and_a_dashboard_over_the_pipeline_metrics(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod-gpu"]
    (rule,) = of_kind(objects, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "VlfDeadLetterGrowth",
        "VlfGatherTimeoutRatingFailed",
        "VlfConsumerLagHigh",
        "VlfJudgeSpendRateHigh",
        "VlfJobSupervisionFailing",
        "VlfServiceDown",
    }
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (dashboard,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    panels = json.loads(dashboard["data"]["vlf-pipeline.json"])["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    metrics = [
        "vlf_messages_consumed_total",
        "vlf_messages_produced_total",
        "vlf_messages_dead_lettered_total",
    ]
    metrics += ["vlf_consumer_lag", "vlf_handler_seconds_bucket", "vlf_judge_spend_usd_total"]
    for metric in [*metrics, "vlf_backend_tokens_total"]:
        assert metric in exprs, metric
    assert not of_kind(rendered["default"], "ServiceMonitor") and not of_kind(
        rendered["default"], "PrometheusRule"
    )


def test_network_policy_and_disruption_budget_cover_every_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod-gpu"]
    budgets = {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")}
    assert budgets == {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    selected = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        selected |= set(selector.get("matchExpressions", [{}])[-1].get("values", []))
        selected |= {selector.get("matchLabels", {}).get(COMPONENT)}
    assert {d["metadata"]["labels"][COMPONENT] for d in of_kind(objects, "Deployment")} <= selected


# --- generated docs --------------------------------------------------------------------------------


def test_readme_table_and_values_schema_are_regenerated_without_diff() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "k8s" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_gen_docs_names_undocumented_values() -> None:
    sys.path.insert(0, str(REPO / "k8s"))
    try:
        import gen_docs
    finally:
        sys.path.remove(str(REPO / "k8s"))
    text = "## @param a.b Documented\na:\n  b: 1\n  c: 2\n## @param gone Nothing here\n"
    with pytest.raises(gen_docs.DocsError) as error:
        gen_docs.check_documented(yaml.safe_load(text), gen_docs.parse_params(text))
    assert "undocumented value: a.c" in str(error.value)
    assert "@param names no value in values.yaml: gone" in str(error.value)
