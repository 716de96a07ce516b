"""Jobs as Kubernetes Jobs: each run of a training job is a ``batch/v1`` Job on the GPU node pool.

The chart renders the Job template (``job.yaml`` in the ``<release>-vlf-trainer-job`` ConfigMap);
this launcher fills in, per run, a deterministic name (so a service that restarts mid-start gets
"already exists" instead of a second run), the job id as a label and annotation, and the job id in
the containers' ``VLF_TRAINER_JOB_ID``. Runs are found again by label after a service restart: a
Job that is neither Complete nor Failed counts as running, so a trainer pod that restarts never
starts a second run beside a live one. Jobs outlive the service: stopping it leaves them running.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.jobs import UnlaunchableJob

log = logging.getLogger(__name__)

JOB_KEY_LABEL = "vlf.io/job-key"  # a hash: job ids need not be valid label values
JOB_ID_ANNOTATION = "vlf.io/job-id"
REJECTED = {400, 422}  # malformed or invalid: the same request will never be accepted
MAX_NAME = 63  # the Job controller copies the name into a pod label, so the label limit applies


def job_key(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:16]


def run_name(prefix: str, job_id: str, attempt: int) -> str:
    """``<prefix><readable part of the id>-<key>-a<attempt>``: unique per (job, attempt), <= 63 chars."""
    tail = f"{job_key(job_id)[:10]}-a{attempt}"
    prefix = prefix if prefix.endswith("-") else prefix + "-"
    prefix = prefix[: MAX_NAME - len(tail)]
    readable = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")
    readable = readable[: max(MAX_NAME - len(prefix) - len(tail) - 1, 0)].rstrip("-")
    return prefix + (f"{readable}-" if readable else "") + tail


def job_manifest(template: dict[str, Any], job_id: str, attempt: int, job_id_env: str) -> dict[str, Any]:
    """The Job for one run of ``job_id``, built from the chart's template (which is not modified)."""
    manifest = copy.deepcopy(template)
    metadata = manifest.setdefault("metadata", {})
    prefix = metadata.pop("generateName", None) or metadata.get("name", "vlf-job")
    metadata["name"] = run_name(prefix, job_id, attempt)
    pod = manifest["spec"]["template"]
    for meta in (metadata, pod.setdefault("metadata", {})):
        meta.setdefault("labels", {})[JOB_KEY_LABEL] = job_key(job_id)
        meta.setdefault("annotations", {})[JOB_ID_ANNOTATION] = job_id
    containers = pod["spec"]["containers"]
    if not any(e["name"] == job_id_env for c in containers for e in c.get("env", [])):
        raise ValueError(f"the Job template sets no {job_id_env} env in any container")
    for container in containers:
        for env in container.get("env", []):
            if env["name"] == job_id_env:
                env["value"] = job_id
        for section in ("limits", "requests"):  # the client types quantities as strings; YAML's 8 is an int
            quantities = (container.get("resources") or {}).get(section) or {}
            for name, value in quantities.items():
                quantities[name] = str(value)
    return manifest


def is_finished(job: Any) -> bool:
    """Complete or Failed (the Job controller's terminal conditions)."""
    conditions = (job.status.conditions if job.status else None) or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


def batch_api() -> Any:
    """The ``BatchV1Api`` of the cluster this runs in (service account), or of the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.BatchV1Api()


@dataclass
class KubernetesJobLauncher:
    template_path: Path
    namespace: str
    job_id_env: str
    api: Any = None  # a kubernetes.client.BatchV1Api; created from the environment when None
    _template: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._template = yaml.safe_load(self.template_path.read_text())
        job_manifest(self._template, "check", 1, self.job_id_env)  # a broken template fails at start-up
        if self.api is None:
            self.api = batch_api()

    def start(self, job_id: str, attempt: int) -> None:
        from kubernetes.client.exceptions import ApiException

        manifest = job_manifest(self._template, job_id, attempt, self.job_id_env)
        try:
            self.api.create_namespaced_job(self.namespace, manifest)
        except ValidationError as exc:  # the client's own check of the manifest
            raise UnlaunchableJob(f"invalid Job manifest: {exc}") from exc
        except ApiException as exc:
            if exc.status == 409:
                log.info("Job %s already exists (created before a restart)", manifest["metadata"]["name"])
                return
            if exc.status in REJECTED:
                raise UnlaunchableJob(f"the API server rejected the Job ({exc.status}): {exc.body}") from exc
            raise  # unreachable, overloaded or throttled: the supervisor tries again next round
        log.info("created Job %s for job %s attempt %d", manifest["metadata"]["name"], job_id, attempt)

    def running(self) -> set[str]:
        jobs = self.api.list_namespaced_job(self.namespace, label_selector=JOB_KEY_LABEL)
        return {
            job.metadata.annotations[JOB_ID_ANNOTATION]
            for job in jobs.items
            if not is_finished(job) and JOB_ID_ANNOTATION in (job.metadata.annotations or {})
        }

    def stop(self) -> None:
        """Nothing: the Jobs keep training while the service is away and are found again by label."""
