"""The trainer's permissions on a real API server (etcd + kube-apiserver with RBAC): the chart's
Role and ValidatingAdmissionPolicy applied as Helm would, requests made as the trainer's
ServiceAccount (impersonated). The launcher's own calls work; anything else is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.kafka_helpers import wait_until

TRAINER_KINDS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def _status(call) -> int:  # noqa: ANN001 - a zero-argument callable making one API request
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


def test_the_trainer_may_launch_its_jobs_and_nothing_else(tmp_path: Path) -> None:
    from kubernetes import client, config, utils

    from services.trainer.__main__ import TRAINER_JOB_ID_ENV
    from shared.jobs import UnlaunchableJob
    from shared.k8s_jobs import KubernetesJobLauncher, job_manifest
    from tests.integration.control_plane import control_plane
    from tests.unit.k8s.test_chart import NAMESPACE, VALUES_FILES, render, training_job

    objects = render([VALUES_FILES["prod-gpu"]])
    template = training_job(objects)
    template_path = tmp_path / "job.yaml"
    template_path.write_text(yaml.safe_dump(template))
    (trainer_sa,) = [o for o in objects if o["kind"] == "Role"]
    trainer_user = f"system:serviceaccount:{NAMESPACE}:{trainer_sa['metadata']['name']}"

    with control_plane(tmp_path / "k8s", authorization_mode="RBAC") as cluster:
        admin = config.new_client_from_config(str(cluster.kubeconfig))
        client.CoreV1Api(admin).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        )
        for obj in objects:
            if obj["kind"] in TRAINER_KINDS:
                utils.create_from_dict(admin, obj)
        as_trainer = config.new_client_from_config(str(cluster.kubeconfig))
        as_trainer.set_default_header("Impersonate-User", trainer_user)
        batch = client.BatchV1Api(as_trainer)

        def job(**changes: Any) -> dict[str, Any]:
            manifest = job_manifest(template, "probe", 1, TRAINER_JOB_ID_ENV)
            pod = manifest["spec"]["template"]["spec"]
            for path, value in changes.items():
                *parents, leaf = path.split("__")
                node = pod
                for key in parents:
                    node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
                node[leaf] = value
            return manifest

        def dry_run(manifest: dict[str, Any]) -> int:
            return _status(lambda: batch.create_namespaced_job(NAMESPACE, manifest, dry_run="All"))

        other_image = job(containers__0__image="docker.io/library/python:3.12")
        wait_until(lambda: dry_run(other_image) == 422, 60, "the admission policy to take effect")

        # The launcher's calls (create, list) pass RBAC and the policy.
        launcher = KubernetesJobLauncher(template_path, NAMESPACE, TRAINER_JOB_ID_ENV, api=batch)
        launcher.start("dpo-run", 1)
        assert launcher.running() == {"dpo-run"}

        # What a stolen trainer token would try, each refused by the policy (422: given up at once).
        hostile = {
            "another image": other_image,
            "another command": job(containers__0__command=["python", "-c", "print(1)"]),
            "args": job(containers__0__args=["--extra"]),
            "another ServiceAccount": job(serviceAccountName="default"),
            "a mounted token": job(automountServiceAccountToken=True),
            "host network": job(hostNetwork=True),
            "host PID": job(hostPID=True),
            "a hostPath": job(
                volumes=[
                    *template["spec"]["template"]["spec"]["volumes"],
                    {"name": "root", "hostPath": {"path": "/"}},
                ]
            ),
            "privileged": job(containers__0__securityContext__privileged=True),
            "root": job(containers__0__securityContext__runAsNonRoot=False),
            "an init container": job(
                initContainers=[
                    {
                        **copy.deepcopy(job()["spec"]["template"]["spec"]["containers"][0]),
                        "name": "x",
                        "image": "busybox",
                    }
                ]
            ),
        }
        for what, manifest in hostile.items():
            assert dry_run(manifest) == 422, f"{what} was admitted"
        assert dry_run(job()) == 200, "the template itself stays admissible"

        tampered = template_path.with_name("tampered.yaml")
        tampered.write_text(yaml.safe_dump({**other_image, "metadata": template["metadata"]}))
        with pytest.raises(UnlaunchableJob, match="training image"):
            KubernetesJobLauncher(tampered, NAMESPACE, TRAINER_JOB_ID_ENV, api=batch).start("evil", 1)

        # RBAC: nothing beyond creating and listing Jobs.
        (created,) = batch.list_namespaced_job(NAMESPACE).items
        core = client.CoreV1Api(as_trainer)
        forbidden = {
            "delete a Job": lambda: batch.delete_namespaced_job(created.metadata.name, NAMESPACE),
            "read a Job": lambda: batch.read_namespaced_job(created.metadata.name, NAMESPACE),
            "patch a Job": lambda: batch.patch_namespaced_job(
                created.metadata.name, NAMESPACE, {"metadata": {"labels": {"x": "y"}}}
            ),
            "list pods": lambda: core.list_namespaced_pod(NAMESPACE),
            "read Secrets": lambda: core.list_namespaced_secret(NAMESPACE),
            "create a pod": lambda: core.create_namespaced_pod(
                NAMESPACE,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p"},
                    "spec": job()["spec"]["template"]["spec"],
                },
            ),
            "Jobs in another namespace": lambda: client.BatchV1Api(as_trainer).list_namespaced_job("default"),
        }
        for what, call in forbidden.items():
            assert _status(call) == 403, f"the trainer may {what}"

        # The policy binds the trainer only: the operator (here the admin) is not limited by it.
        operator_batch = client.BatchV1Api(admin)
        assert (
            _status(lambda: operator_batch.create_namespaced_job(NAMESPACE, other_image, dry_run="All"))
            == 200
        )
