"""The job supervisor's rules (start, restart, give up, parallelism) and the Kubernetes launcher's
view of its Jobs. The ledger is a real SQLite file; the launchers' backends are stand-ins here (the
real child processes run in the trainer and evaluator integration tests)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from shared.jobs import JobSupervisor, LocalProcessLauncher
from shared.k8s_jobs import JOB_ID_ANNOTATION, KubernetesJobLauncher, job_manifest
from shared.ledger import Ledger


@dataclass
class ScriptedLauncher:
    """Runs nothing; the test says which jobs are still running."""

    started: list[tuple[str, int]] = field(default_factory=list)
    alive: set[str] = field(default_factory=set)

    def start(self, job_id: str, attempt: int) -> None:
        self.started.append((job_id, attempt))
        self.alive.add(job_id)

    def running(self) -> set[str]:
        return set(self.alive)

    def stop(self) -> None:
        self.alive.clear()


@dataclass
class FlakyLauncher(ScriptedLauncher):
    """Its first ``running()`` fails, as a cluster API that is briefly away."""

    calls: int = 0

    def running(self) -> set[str]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("API server unreachable")
        return super().running()


def test_supervision_rounds_and_failed_rounds_are_on_the_services_metrics(ledger: Ledger) -> None:
    registry = CollectorRegistry()
    launcher = FlakyLauncher()
    supervisor = JobSupervisor(ledger, "train", launcher, registry=registry)
    ledger.create_job("j1", "train", {})
    stopped = threading.Event()

    def rounds(name: str) -> float:
        return registry.get_sample_value(f"vlf_job_supervision_{name}_total", {"kind": "train"}) or 0.0

    thread = threading.Thread(target=supervisor.run, args=(stopped, 0.01))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while rounds("rounds") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stopped.set()
        thread.join(timeout=10)
    assert rounds("failed_rounds") == 1
    assert rounds("rounds") >= 3
    assert launcher.started == [("j1", 1)]  # the round after the failure started the job


def test_a_job_that_ends_without_a_result_is_started_again_then_given_up(ledger: Ledger) -> None:
    launcher = ScriptedLauncher()
    failures: list[tuple[str, str]] = []
    supervisor = JobSupervisor(
        ledger, "train", launcher, max_attempts=2, on_failed=lambda *failure: failures.append(failure)
    )
    ledger.create_job("j1", "train", {})

    supervisor.tick()
    supervisor.tick()  # still running: not started twice
    assert launcher.started == [("j1", 1)]

    launcher.alive.clear()  # died without marking itself completed or failed
    supervisor.tick()
    assert launcher.started == [("j1", 1), ("j1", 2)]

    launcher.alive.clear()
    supervisor.tick()
    assert launcher.started == [("j1", 1), ("j1", 2)]
    job = ledger.job("j1")
    assert job is not None and job.status == "failed" and "2 attempts" in (job.error or "")
    assert failures == [("j1", job.error)]


def test_a_failure_that_could_not_be_published_is_published_in_a_later_round(ledger: Ledger) -> None:
    published: list[str] = []

    def publish_once_the_broker_is_back(job_id: str, reason: str) -> None:
        published.append(job_id)
        if len(published) == 1:
            raise ConnectionError("broker away")

    launcher = ScriptedLauncher()
    supervisor = JobSupervisor(
        ledger, "eval", launcher, max_attempts=1, on_failed=publish_once_the_broker_is_back
    )
    ledger.create_job("j1", "eval", {})
    supervisor.tick()
    launcher.alive.clear()  # its only attempt ended without a result

    with pytest.raises(ConnectionError):
        supervisor.tick()
    assert ledger.job("j1").status == "queued"  # still active: the next round retries
    supervisor.tick()
    assert ledger.job("j1").status == "failed"
    supervisor.tick()
    assert published == ["j1", "j1"]


def test_finished_jobs_are_left_alone_and_parallelism_is_capped(ledger: Ledger) -> None:
    launcher = ScriptedLauncher()
    supervisor = JobSupervisor(ledger, "train", launcher, max_parallel=1)
    for job_id in ("a", "b", "c"):
        ledger.create_job(job_id, "train", {})
    ledger.create_job("other-kind", "eval", {})
    ledger.update_job("a", status="completed")

    supervisor.tick()
    assert [job_id for job_id, _ in launcher.started] == ["b"]
    ledger.update_job("b", status="completed")
    launcher.alive.clear()
    supervisor.tick()
    assert [job_id for job_id, _ in launcher.started] == ["b", "c"]


def test_a_run_found_alive_after_a_restart_is_not_started_again(ledger: Ledger) -> None:
    ledger.create_job("j1", "train", {})
    ledger.update_job("j1", status="running", attempts=1)
    launcher = ScriptedLauncher(alive={"j1"})  # e.g. a Kubernetes Job created before the restart
    JobSupervisor(ledger, "train", launcher).tick()
    assert launcher.started == []


def test_local_processes_are_seen_until_they_exit(tmp_path: Path) -> None:
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "quick_job.py").write_text("import sys\nprint('job', sys.argv[1:])\n")
    launcher = LocalProcessLauncher(
        module="quick_job", log_dir=tmp_path / "logs", extra_env={"PYTHONPATH": str(module_dir)}
    )
    launcher.start("j1", 1)
    assert launcher.running() == {"j1"}
    launcher._processes["j1"].wait(timeout=30)
    assert launcher.running() == set()
    assert "job ['--job-id', 'j1']" in (tmp_path / "logs" / "j1.log").read_text()


TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"generateName": "vlf-trainer-run-", "labels": {"app": "vlf"}},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "vlf"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "train", "image": "vlf", "env": [{"name": "JOB_ID", "value": ""}]}],
            },
        }
    },
}


def k8s_job(job_id: str, *conditions: str) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(annotations={JOB_ID_ANNOTATION: job_id}),
        status=SimpleNamespace(conditions=[SimpleNamespace(type=c, status="True") for c in conditions]),
    )


@dataclass
class FakeBatchApi:
    jobs: list[SimpleNamespace] = field(default_factory=list)
    create_error: ApiException | None = None
    selectors: list[str] = field(default_factory=list)

    def create_namespaced_job(self, namespace: str, body: dict) -> None:
        if self.create_error:
            raise self.create_error

    def list_namespaced_job(self, namespace: str, label_selector: str) -> SimpleNamespace:
        self.selectors.append(label_selector)
        return SimpleNamespace(items=self.jobs)


def launcher_with(api: FakeBatchApi, tmp_path: Path) -> KubernetesJobLauncher:
    template = tmp_path / "job.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE))
    return KubernetesJobLauncher(template, "vlf", "JOB_ID", api=api)


def test_kubernetes_jobs_count_as_running_until_complete_or_failed(tmp_path: Path) -> None:
    api = FakeBatchApi(jobs=[k8s_job("pending"), k8s_job("done", "Complete"), k8s_job("broke", "Failed")])
    assert launcher_with(api, tmp_path).running() == {"pending"}
    assert api.selectors == ["vlf.io/job-key"]


def test_a_run_created_before_a_restart_is_not_an_error_but_other_api_errors_are(tmp_path: Path) -> None:
    launcher = launcher_with(
        FakeBatchApi(create_error=ApiException(status=409, reason="AlreadyExists")), tmp_path
    )
    launcher.start("j1", 1)
    launcher.api.create_error = ApiException(status=403, reason="Forbidden")
    with pytest.raises(ApiException):
        launcher.start("j1", 2)


def test_a_template_without_the_job_id_env_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JOB_ID"):
        job_manifest(TEMPLATE, "j1", 1, "VLF_TRAINER_JOB_ID")
    template = tmp_path / "job.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE))
    with pytest.raises(ValueError, match="OTHER_ENV"):
        KubernetesJobLauncher(template, "vlf", "OTHER_ENV", api=FakeBatchApi())


def test_the_template_is_not_modified_by_building_runs() -> None:
    before = yaml.safe_dump(TEMPLATE)
    manifest = job_manifest(TEMPLATE, "j1", 3, "JOB_ID")
    assert yaml.safe_dump(TEMPLATE) == before
    assert manifest["metadata"]["name"].startswith("vlf-trainer-run-j1-") and manifest["metadata"][
        "name"
    ].endswith("-a3")


def test_a_job_the_cluster_rejects_fails_with_the_reason_and_others_still_start(
    ledger: Ledger, tmp_path: Path
) -> None:
    api = FakeBatchApi(create_error=ApiException(status=422, reason="Unprocessable Entity"))
    failures: list[tuple[str, str]] = []
    supervisor = JobSupervisor(
        ledger, "train", launcher_with(api, tmp_path), on_failed=lambda *failure: failures.append(failure)
    )
    ledger.create_job("j1", "train", {})
    supervisor.tick()
    job = ledger.job("j1")
    assert job is not None and job.status == "failed" and job.attempts == 0
    assert failures and "rejected the Job (422)" in failures[0][1]


def test_the_supervisor_survives_a_failing_round(ledger: Ledger) -> None:
    class FlakyLauncher(ScriptedLauncher):
        calls = 0

        def running(self) -> set[str]:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("API server unreachable")
            return super().running()

    launcher = FlakyLauncher()
    ledger.create_job("j1", "train", {})
    stopped = threading.Event()
    supervisor = JobSupervisor(ledger, "train", launcher)
    thread = threading.Thread(target=supervisor.run, args=(stopped, 0.01))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not launcher.started and time.monotonic() < deadline:
            stopped.wait(0.01)
    finally:
        stopped.set()
        thread.join(timeout=10)
    assert launcher.started == [("j1", 1)] and launcher.calls >= 2


def test_a_run_is_counted_before_it_starts_so_a_crash_just_after_cannot_lose_it(ledger: Ledger) -> None:
    """What a restarted service finds if this one dies the moment the run exists: the run counted
    (counting after the start lost it, and the next run reused its number)."""
    counted_at_start: list[int] = []

    class CountingLauncher(ScriptedLauncher):
        def start(self, job_id: str, attempt: int) -> None:
            counted_at_start.append(ledger.job(job_id).attempts)
            super().start(job_id, attempt)

    ledger.create_job("j1", "train", {})
    JobSupervisor(ledger, "train", CountingLauncher()).tick()
    assert counted_at_start == [1]


def test_a_start_that_fails_is_not_counted(ledger: Ledger) -> None:
    class UnreachableLauncher(ScriptedLauncher):
        def start(self, job_id: str, attempt: int) -> None:
            raise ConnectionError("API server unreachable")

    ledger.create_job("j1", "train", {})
    with pytest.raises(ConnectionError):
        JobSupervisor(ledger, "train", UnreachableLauncher()).tick()
    assert ledger.job("j1").attempts == 0
