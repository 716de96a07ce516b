"""The trainer on the real broker: requests -> progress -> checkpoints that reload and generate."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import torch  # noqa: F401 - the train extra: without it this module fails, not skips
import yaml

from devkit.kafka_local import free_ports
from shared.backends.base import ChatMessage, GenerationRequest
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.events import SamplingParams
from shared.ledger import Ledger
from shared.runtime.admin import EventPublisher
from shared.runtime.dlq import read_dlq_headers
from tests.integration.kafka_helpers import consume_all, wait_until
from tests.integration.pipeline_helpers import COLOURS, Pipeline, png, write_registry

SUPERVISION_ROUNDS = 'vlf_job_supervision_rounds_total{kind="train"}'


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from devkit.tinymodels import build_tiny_vlm

    root = tmp_path_factory.mktemp("models")
    return {family: build_tiny_vlm(family, root / family) for family in ("qwen2_vl", "llava")}


def _record_pairs(ledger: Ledger, blobs: BlobStore, n: int = 8) -> None:
    pairs = []
    for i in range(n):
        colour = list(COLOURS)[i % 4]
        wrong = list(COLOURS)[(i + 1) % 4]
        uri = blobs.put(png(colour), suffix=".png")
        pairs.append(
            ev.Pair(
                pair_id=f"pair-{i}",
                instruction_id=f"inst-train-{i:04d}",
                prompt="What colour is the square?",
                image_uris=[uri],
                chosen=ev.PairSide(response_id=f"c{i}", model_id="a", text=colour, score=5),
                rejected=ev.PairSide(response_id=f"r{i}", model_id="b", text=wrong, score=1),
                margin=4,
                strategy="vlfeedback",
                judge_ids=["verify"],
                split="train",
            )
        )
    ledger.record(*pairs)


def _request(job_id: str, base_model: str, **kw) -> ev.TrainRequest:
    hparams = ev.TrainHyperparams(
        max_steps=kw.pop("max_steps", 2),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        gradient_checkpointing=False,
        learning_rate=1e-3,
        warmup_ratio=0.0,
    )
    return ev.TrainRequest(
        job_id=job_id, base_model=base_model, hparams=hparams, lora=ev.LoraSpec(r=8, lora_alpha=16), **kw
    )


def _setup(kafka_bootstrap, namespace, ledger_url, tmp_path):
    registry = write_registry(tmp_path / "registry.yaml", "http://127.0.0.1:9/v1", ["m1"], 1)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    pipeline.env.update(
        HF_HUB_OFFLINE="1",
        VLF_TRAINER_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        VLF_TRAINER_JOB_LOG_DIR=str(tmp_path / "jobs"),
        VLF_TRAINER_SAVE_STEPS="2",
    )
    ledger = Ledger(ledger_url)
    ledger.migrate()
    _record_pairs(ledger, BlobStore(str(pipeline.blob_dir)))
    return pipeline, ledger


def _generates(checkpoint: ev.Checkpoint) -> str:
    from shared.backends.transformers_local import TransformersBackend

    artifact = checkpoint.artifact_uri.removeprefix("file://")
    if checkpoint.kind == "adapter":
        backend = TransformersBackend(checkpoint.base_model, adapter_path=artifact)
    else:
        backend = TransformersBackend(artifact)
    request = GenerationRequest(
        messages=[ChatMessage(role="user", text="What colour is the square?")],
        images=[png("red")],
        params=SamplingParams(max_tokens=4),
    )
    [result] = backend.generate([request])
    backend.close()
    return result.text


def _tensorboard_text(runs: Path) -> dict[str, str]:
    """Text panels (tag -> text) of the TensorBoard event files under ``runs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    panels = {}
    for folder in {path.parent for path in runs.rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            text = events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            panels[tag.removesuffix("/text_summary")] = text
    return panels


def test_requests_become_checkpoints_that_reload_and_generate(
    kafka_bootstrap, namespace, ledger_url, tmp_path, tiny_models
):
    pipeline, ledger = _setup(kafka_bootstrap, namespace, ledger_url, tmp_path)
    requests = [
        _request("qwen-lora", str(tiny_models["qwen2_vl"])),
        _request("llava-lora", str(tiny_models["llava"])),
        _request("qwen-full", str(tiny_models["qwen2_vl"]), use_lora=False),
        _request("qwen-merged", str(tiny_models["qwen2_vl"]), merge_adapter=True),
        _request("bad-path", "/nonexistent/model"),
        _request("bad-hub", "no-such-org/no-such-model"),
        _request(
            "no-pairs", str(tiny_models["qwen2_vl"]), dataset=ev.DatasetSelector(strategy="best_vs_worst")
        ),
    ]
    try:
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish(requests)
        pipeline.start("services.trainer", "trainer")
        wait_until(
            lambda: ledger.count(ev.Checkpoint) == 4 and len(ledger.jobs(status="failed")) == 2, 420, "jobs"
        )
    finally:
        failures = pipeline.stop_all()
    assert not failures, failures
    checkpoints = {c.job_id: c for c in ledger.iter_facts(ev.Checkpoint)}
    assert {j: c.kind for j, c in checkpoints.items()} == {
        "qwen-lora": "adapter",
        "llava-lora": "adapter",
        "qwen-full": "full",
        "qwen-merged": "merged",
    }
    # The default tracker, TensorBoard, logged each run in its job's folder.
    for job_id in checkpoints:
        assert list((tmp_path / "ckpt" / job_id / "runs").rglob("events.out.tfevents.*")), job_id
    # ... with the pipeline's figures beside TRL's arguments: a TensorBoard text panel and vlf_run.json
    facts = json.loads((tmp_path / "ckpt" / "qwen-lora" / "vlf_run.json").read_text())
    assert facts["pairs"] == ledger.count(ev.Pair) and facts["strategy"] == "vlfeedback"
    panel = _tensorboard_text(tmp_path / "ckpt" / "qwen-lora" / "runs")["vlf/run"]
    assert f"| pairs | {facts['pairs']} |" in panel and "| judges | verify |" in panel
    merged = Path(checkpoints["qwen-merged"].artifact_uri.removeprefix("file://"))
    assert not (merged / "adapter_config.json").exists(), "merged: loads without the adapter or PEFT"
    for checkpoint in checkpoints.values():
        assert checkpoint.metrics["steps"] == 2
        assert isinstance(_generates(checkpoint), str)
    errors = {j.id: j.error for j in ledger.jobs(status="failed")}
    assert "unknown model" in errors["bad-hub"]
    assert "empty dataset" in errors["no-pairs"]
    progress = [
        json.loads(r.value) for r in consume_all(kafka_bootstrap, namespace + topics.TRAIN_PROGRESS.name)
    ]
    for job_id in ("qwen-lora", "llava-lora", "qwen-full", "qwen-merged"):
        statuses = [p["status"] for p in progress if p["job_id"] == job_id]
        assert statuses[0] == "queued" and statuses[-1] == "completed" and "running" in statuses
        running = [p for p in progress if p["job_id"] == job_id and p["status"] == "running"]
        assert all(p["loss"] is not None and p["pairs_per_s"] > 0 for p in running)
        final = [p for p in progress if p["job_id"] == job_id][-1]
        assert (final["step"], final["total_steps"]) == (2, 2) and final["loss"] == running[-1]["loss"]
        assert ledger.job(job_id).progress["total_steps"] == 2, "the report's training table reads this"
    assert any(
        p["job_id"] == "bad-hub" and p["status"] == "failed" and "unknown model" in p["error"]
        for p in progress
    )
    dead = consume_all(kafka_bootstrap, namespace + topics.TRAIN_REQUESTS.dlq, expect=1)
    reasons = [read_dlq_headers(d.headers) for d in dead]
    assert [r["error.class"] for r in reasons] == ["InvalidTrainRequest"]
    assert "does not exist" in reasons[0]["error.message"]


def test_a_trainer_killed_mid_job_resumes_it(kafka_bootstrap, namespace, ledger_url, tmp_path, tiny_models):
    pipeline, ledger = _setup(kafka_bootstrap, namespace, ledger_url, tmp_path)
    with EventPublisher(pipeline.settings) as publisher:
        publisher.publish([_request("resume-me", str(tiny_models["qwen2_vl"]), max_steps=8)])
    trainer = pipeline.start("services.trainer", "trainer-1")
    checkpoints = tmp_path / "ckpt" / "resume-me"
    from services.trainer.dpo import last_complete_checkpoint

    # complete, not just begun: a kill while the first one is written leaves nothing to resume from
    wait_until(lambda: last_complete_checkpoint(checkpoints) is not None, 300, "a first complete checkpoint")
    os.killpg(trainer.pid, signal.SIGKILL)  # the service and its job process, as when a pod dies
    trainer.wait(timeout=30)
    assert ledger.job("resume-me").status == "running"
    try:
        pipeline.start("services.trainer", "trainer-2")
        wait_until(lambda: ledger.count(ev.Checkpoint) == 1, 300, "the resumed job's checkpoint")
    finally:
        failures = [f for f in pipeline.stop_all() if "trainer-1" not in f]
    assert not failures, failures
    job = ledger.job("resume-me")
    assert job.status == "completed" and job.attempts == 2
    [checkpoint] = ledger.iter_facts(ev.Checkpoint)
    assert checkpoint.metrics["steps"] == 8
    log = (tmp_path / "jobs" / "resume-me.log").read_text()
    assert "resuming from" in log and "checkpoint-" in log


def test_the_charts_multi_process_launch_trains_once_and_reports_once(
    kafka_bootstrap, namespace, ledger_url, tmp_path, tiny_models
):
    """The Kubernetes Job's command (`accelerate launch -m services.trainer.job`), with 2 processes on
    CPU (gloo) instead of DeepSpeed on GPUs: one artifact, one checkpoint event, one completed job."""
    import subprocess
    import sys

    pipeline, ledger = _setup(kafka_bootstrap, namespace, ledger_url, tmp_path)
    request = _request("two-procs", str(tiny_models["qwen2_vl"]), max_steps=2)
    assert ledger.create_job(request.job_id, "train", request.model_dump(mode="json"))
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n"
        "num_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n"
        f"main_process_ip: 127.0.0.1\nmain_process_port: {free_ports()}\nrdzv_backend: static\n"
        "same_network: true\n"
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    result = subprocess.run(
        [*launch, "-m", "services.trainer.job", "--job-id", request.job_id],
        env={**pipeline.env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    job = ledger.job(request.job_id)
    assert job.status == "completed", job.error
    [checkpoint] = ledger.iter_facts(ev.Checkpoint)
    assert checkpoint.metrics["steps"] == 2
    events = consume_all(kafka_bootstrap, namespace + topics.CHECKPOINTS.name, expect=1, timeout_s=10)
    assert len(events) == 1
    progress = [
        json.loads(r.value)
        for r in consume_all(kafka_bootstrap, namespace + topics.TRAIN_PROGRESS.name, timeout_s=10)
    ]
    assert [p["status"] for p in progress].count("completed") == 1
    assert _generates(checkpoint)


def _supervision_rounds(port: int) -> float:
    """Rounds the trainer's job supervisor has done, from its /metrics (0 until it serves them)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.ConnectError:
        return 0.0
    return next(
        (float(line.split()[-1]) for line in text.splitlines() if line.startswith(SUPERVISION_ROUNDS)), 0.0
    )


def test_on_kubernetes_each_run_is_a_job_that_survives_trainer_restarts(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    """The trainer with the chart's settings against a real API server (etcd + kube-apiserver; no
    kubelet, so the test writes each Job's end state): one Job per run from the chart's template, no
    second run beside a live one after a restart, a new run when one ends without a result, and a
    failed job after max_attempts."""

    from kubernetes import client

    from shared.k8s_jobs import JOB_ID_ANNOTATION
    from tests.integration.control_plane import control_plane
    from tests.unit.k8s.test_chart import NAMESPACE, VALUES_FILES, render, training_job

    template = tmp_path / "job.yaml"
    template.write_text(yaml.safe_dump(training_job(render([VALUES_FILES["prod-gpu"]]))))
    pipeline, ledger = _setup(kafka_bootstrap, namespace, ledger_url, tmp_path)
    try:
        with control_plane(tmp_path / "k8s") as cluster:
            cluster.core_api().create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
            )
            batch = cluster.batch_api()

            def runs() -> list:
                jobs = batch.list_namespaced_job(NAMESPACE).items
                return sorted(jobs, key=lambda job: int(job.metadata.name.rsplit("-a", 1)[1]))  # attempt

            env = {
                "VLF_TRAINER_LAUNCHER": "kubernetes",
                "VLF_TRAINER_JOB_TEMPLATE_PATH": str(template),
                "VLF_TRAINER_NAMESPACE": NAMESPACE,
                "VLF_TRAINER_MAX_ATTEMPTS": "2",
                "KUBECONFIG": str(cluster.kubeconfig),
            }
            trainer = pipeline.start("services.trainer", "trainer-1", **env)
            with EventPublisher(pipeline.settings) as publisher:
                publisher.publish([_request("on-k8s", "Qwen/Qwen2-VL-7B-Instruct")])
            wait_until(lambda: len(runs()) == 1, 60, "the first run's Job")
            [first] = runs()
            assert first.metadata.annotations[JOB_ID_ANNOTATION] == "on-k8s"
            container = first.spec.template.spec.containers[0]
            assert container.command[:2] == ["accelerate", "launch"]
            assert {e.name: e.value for e in container.env}["VLF_TRAINER_JOB_ID"] == "on-k8s"
            assert container.resources.limits["nvidia.com/gpu"] == "8"

            os.killpg(trainer.pid, signal.SIGKILL)  # the trainer pod dies; its Job keeps running
            trainer.wait(timeout=30)
            port = free_ports()
            pipeline.start("services.trainer", "trainer-2", **env, VLF_HTTP_PORT=str(port))
            wait_until(
                lambda: _supervision_rounds(port) >= 5, 60, "five supervision rounds of the new trainer"
            )
            assert [job.metadata.name for job in runs()] == [first.metadata.name]
            assert ledger.job("on-k8s").attempts == 1

            cluster.end_job(first.metadata.name, NAMESPACE, "Failed")  # e.g. the node was lost
            wait_until(lambda: len(runs()) == 2, 60, "a second run after the first ended without a result")
            second = runs()[1]
            assert second.metadata.name.endswith("-a2") and ledger.job("on-k8s").attempts == 2

            cluster.end_job(second.metadata.name, NAMESPACE, "Failed")
            wait_until(lambda: ledger.job("on-k8s").status == "failed", 60, "the job to be given up")
            rounds = _supervision_rounds(port)
            wait_until(lambda: _supervision_rounds(port) >= rounds + 3, 60, "three more supervision rounds")
            assert len(runs()) == 2
    finally:
        failures = [f for f in pipeline.stop_all() if "trainer-1" not in f]
    assert not failures, failures
    assert "gave up after 2 attempts" in ledger.job("on-k8s").error
    progress = [
        json.loads(r.value) for r in consume_all(kafka_bootstrap, namespace + topics.TRAIN_PROGRESS.name)
    ]
    assert [p["status"] for p in progress if p["job_id"] == "on-k8s"] == ["queued", "failed"]
