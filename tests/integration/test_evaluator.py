"""The evaluator on the real broker: a checkpoint in, every benchmark's result out for tuned and base.

A tiny random Qwen2-VL answers on the CPU (its scores are noise; the test checks the plumbing and
the figures that do not depend on skill), MMHal-Bench's judge is the local OpenAI-compatible test
server, and eval jobs run as real processes under the service's job supervisor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from devkit.benchmark_fixtures import build_mme_fixture, build_mmhal_fixture, build_mmvet_fixture
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from devkit.tinymodels import build_tiny_vlm
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.ledger.tables import PredictionRow
from shared.runtime.admin import EventPublisher
from shared.runtime.dlq import read_dlq_headers
from tests.integration.kafka_helpers import consume_all, wait_until
from tests.integration.pipeline_helpers import Pipeline, png, write_registry

MME_SUBTASKS = ["color", "count"]
MME_IMAGES_PER_SUBTASK = 2
MMHAL_ITEMS = 8
MMVET_ITEMS = 8
HELDOUT_PAIRS = 3
GREEDY_ITEMS = 2
BENCHMARKS = ["mme", "mmhal", "mmvet", "preference_accuracy", "greedy_accuracy"]
JUDGE_RATING = 4
GRADER_SCORE = 0.7


@pytest.fixture
def judge_server():
    def responder(request: dict) -> str:
        """MM-Vet's grader fills in a correctness cell; MMHal-Bench's judge gives a rating."""
        grading = "| Correctness" in json.dumps(request["messages"])
        return str(GRADER_SCORE) if grading else f"Clear.\nRating: {JUDGE_RATING}"

    running = serve_in_thread(TestServerConfig(responder=responder))
    yield running
    running.stop()


def heldout_pairs(blobs: BlobStore) -> list[ev.Pair]:
    image = blobs.put(png("red"), suffix=".png")
    return [
        ev.Pair(
            pair_id=f"pair-{n}",
            instruction_id=f"inst-eval-{n:04d}",
            prompt="What colour is the square?",
            image_uris=[image],
            chosen=ev.PairSide(response_id=f"r{n}-a", model_id="m1", text="The square is red.", score=4.7),
            rejected=ev.PairSide(response_id=f"r{n}-b", model_id="m2", text="It is blue.", score=2.0),
            margin=2.7,
            strategy="vlfeedback",
            judge_ids=["judge-md"],
            split="heldout",
        )
        for n in range(HELDOUT_PAIRS)
    ]


def greedy_file(tmp: Path) -> Path:
    (tmp / "greedy").mkdir()
    (tmp / "greedy" / "red.png").write_bytes(png("red"))
    lines = [
        {"image": "red.png", "prompt": "Is the square red? Answer yes or no.", "reference": "yes"},
        {"image": "red.png", "prompt": "How many squares are there?", "reference": "1"},
    ]
    path = tmp / "greedy" / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_checkpoint_gets_every_benchmark_for_tuned_and_base(
    kafka_bootstrap, namespace, ledger_url, tmp_path, judge_server
):
    model = str(build_tiny_vlm("qwen2_vl", tmp_path / "tiny-qwen2-vl"))
    build_mme_fixture(tmp_path / "mme", MME_SUBTASKS, MME_IMAGES_PER_SUBTASK, seed=0)
    build_mmhal_fixture(tmp_path / "mmhal" / "template.json", tmp_path / "mmhal" / "images", n=MMHAL_ITEMS)
    build_mmvet_fixture(tmp_path / "mm-vet", n=MMVET_ITEMS)
    judges = [
        {"id": "mmhal-judge", "model": "test-model", "base_url": judge_server.base_url, "timeout_s": 10}
    ]
    registry = write_registry(tmp_path / "registry.yaml", judge_server.base_url, ["m1"], 1, judges)
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    ledger.record(*heldout_pairs(BlobStore(str(pipeline.blob_dir))))
    checkpoint = ev.Checkpoint(
        checkpoint_id="ckpt-eval-1",
        job_id="train-eval-1",
        base_model=model,
        artifact_uri=model,
        kind="merged",
    )
    bad_request = ev.EvalRequest(
        eval_id="eval-unknown",
        model=ev.ModelRef(name="tuned", base_model=model),
        benchmarks=["mme", "vqav2"],
    )
    expected_results = len(BENCHMARKS) + len(BENCHMARKS) - 1  # the base model skips preference accuracy
    try:
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish([checkpoint, bad_request])
        pipeline.start(
            "services.evaluator",
            "evaluator",
            VLF_EVALUATOR_AUTO_BENCHMARKS=json.dumps(BENCHMARKS),
            VLF_EVALUATOR_MME_ROOT=str(tmp_path / "mme"),
            VLF_EVALUATOR_MME_SUBTASKS=json.dumps(MME_SUBTASKS),
            VLF_EVALUATOR_MMHAL_PATH=str(tmp_path / "mmhal" / "template.json"),
            VLF_EVALUATOR_MMHAL_IMAGES=str(tmp_path / "mmhal" / "images"),
            VLF_EVALUATOR_MMHAL_JUDGE_ID="mmhal-judge",
            VLF_EVALUATOR_MMVET_ROOT=str(tmp_path / "mm-vet"),
            VLF_EVALUATOR_MMVET_JUDGE_ID="mmhal-judge",
            VLF_EVALUATOR_GREEDY_EVAL_PATH=str(greedy_file(tmp_path)),
            VLF_EVALUATOR_MAX_NEW_TOKENS="8",
            VLF_EVALUATOR_JOB_LOG_DIR=str(tmp_path / "jobs"),
        )
        dead = consume_all(kafka_bootstrap, namespace + topics.EVAL_REQUESTS.dlq, expect=1, timeout_s=60)
        wait_until(lambda: ledger.count(ev.EvalResult) == expected_results, 100, "every eval result")
        published = consume_all(
            kafka_bootstrap, namespace + topics.EVAL_RESULTS.name, expect=expected_results
        )
    finally:
        failures = pipeline.stop_all()
    assert not failures, failures

    headers = read_dlq_headers(dead[0].headers)
    assert headers["error.class"] == "UnknownBenchmarkError"
    assert "eval request for a missing benchmark: ['vqav2']" in headers["error.message"]

    results = {
        (r.model.name, r.benchmark): r
        for r in map(ev.EvalResult.model_validate_json, (p.value for p in published))
    }
    assert sorted(results) == sorted(
        [("tuned", b) for b in BENCHMARKS] + [("base", b) for b in BENCHMARKS if b != "preference_accuracy"]
    )
    assert all(r.status == "completed" and r.error is None for r in results.values()), results
    for name in ("tuned", "base"):
        mme = results[(name, "mme")].metrics
        assert set(mme) == {"perception", "cognition", "total", *MME_SUBTASKS}
        assert mme["total"] == mme["perception"] + mme["cognition"] and 0 <= mme["total"] <= 400
        mmhal = results[(name, "mmhal")].metrics
        assert mmhal["average"] == JUDGE_RATING and mmhal["hallucination_rate"] == 0.0
        assert mmhal["n"] == MMHAL_ITEMS and mmhal["attribute"] == JUDGE_RATING
        mmvet = results[(name, "mmvet")].metrics
        assert mmvet == {
            "total": 70.0,
            "std": 0.0,
            "n": MMVET_ITEMS,
            "rec": 70.0,
            "ocr": 70.0,
            "math": 70.0,
            "spat": 70.0,
        }
        greedy = results[(name, "greedy_accuracy")].metrics
        assert greedy["n"] == GREEDY_ITEMS and 0 <= greedy["accuracy"] <= 1
    preference = results[("tuned", "preference_accuracy")]
    # The merged "tuned" checkpoint is the base model itself: every implicit reward is 0, a tie, never a win.
    assert preference.metrics == {"accuracy": 0.0, "n": float(HELDOUT_PAIRS)}
    assert preference.details["reference_model"] == model
    assert results[("tuned", "mme")].model.checkpoint_id == "ckpt-eval-1"

    assert {job.status for job in ledger.jobs(kind="eval")} == {"completed"}
    mme_questions = len(MME_SUBTASKS) * MME_IMAGES_PER_SUBTASK * 2
    with ledger._session() as session:
        cached = dict(
            session.execute(
                select(PredictionRow.benchmark, func.count()).group_by(PredictionRow.benchmark)
            ).all()
        )
    assert cached == {
        "mme": 2 * mme_questions,
        "mmhal": 2 * MMHAL_ITEMS,
        "mmhal-judge": 2 * MMHAL_ITEMS,
        "mmvet": 2 * MMVET_ITEMS,
        "mmvet-judge": 2 * MMVET_ITEMS,
        "greedy_accuracy": 2 * GREEDY_ITEMS,
    }, "every answer and judge reply is in the ledger, so a rerun regenerates nothing"


def test_a_served_model_is_scored_through_its_registry_endpoint_with_the_registry_key(
    kafka_bootstrap, namespace, ledger_url, tmp_path, monkeypatch
):
    """`vlf eval --endpoint served --wait`: the evaluator answers MME and greedy accuracy through the
    registry's OpenAI-compatible endpoint, with the registry's key (the server refuses any other),
    and the command follows the job to its end. The endpoint always says "Yes", so the scores are
    known: MME's questions come in yes/no pairs (accuracy 50, accuracy+ 0: 50 per subtask), and one
    of the two greedy items is "yes". An evaluation that fails (MMHal-Bench without its files) makes
    `--wait` exit 1 with the reason."""
    key = "sk-served-endpoint"
    monkeypatch.setenv("VLF_TEST_SERVED_KEY", key)
    build_mme_fixture(tmp_path / "mme", MME_SUBTASKS, MME_IMAGES_PER_SUBTASK, seed=0)
    with serve_in_thread(TestServerConfig(responder=lambda _request: "Yes", api_key=key)) as server:
        served = {
            "id": "served",
            "backend": "openai",
            "model": "test-model",
            "base_url": server.base_url,
            "api_key_env": "VLF_TEST_SERVED_KEY",
        }
        registry = tmp_path / "registry.yaml"
        registry.write_text(json.dumps({"models": [served], "models_per_instruction": 1}))
        pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
        ledger = Ledger(ledger_url)
        ledger.migrate()

        def vlf_eval(*args: str) -> subprocess.CompletedProcess:
            command = [
                sys.executable,
                "-m",
                "vlf.cli",
                "eval",
                "test-model",
                "--endpoint",
                "served",
                "--wait",
            ]
            return subprocess.run(
                [*command, *args], env=pipeline.env, capture_output=True, text=True, timeout=150
            )

        try:
            pipeline.start(
                "services.evaluator",
                "evaluator",
                VLF_EVALUATOR_MME_ROOT=str(tmp_path / "mme"),
                VLF_EVALUATOR_MME_SUBTASKS=json.dumps(MME_SUBTASKS),
                VLF_EVALUATOR_GREEDY_EVAL_PATH=str(greedy_file(tmp_path)),
                VLF_EVALUATOR_MMHAL_PATH=str(tmp_path / "no-mmhal.json"),
                VLF_EVALUATOR_JOB_LOG_DIR=str(tmp_path / "jobs"),
            )
            waited = vlf_eval("--name", "served", "--benchmark", "mme", "--benchmark", "greedy_accuracy")
            failed = vlf_eval("--name", "served-mmhal", "--benchmark", "mmhal", "--timeout", "100")
        finally:
            failures = pipeline.stop_all()
    assert not failures, failures
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "completed" in waited.stdout
    [eval_id] = {r.eval_id for r in ledger.iter_facts(ev.EvalResult) if r.model.name == "served"}
    results = {r.benchmark: r for r in ledger.iter_facts(ev.EvalResult, eval_id=eval_id)}
    assert set(results) == {"mme", "greedy_accuracy"}, "--wait returned once every benchmark had a result"
    assert all(r.status == "completed" and r.model.endpoint_id == "served" for r in results.values()), results
    assert {s: results["mme"].metrics[s] for s in MME_SUBTASKS} == {s: 50.0 for s in MME_SUBTASKS}
    assert results["mme"].metrics["total"] == 50.0 * len(MME_SUBTASKS)
    assert results["greedy_accuracy"].metrics == {"accuracy": 0.5, "n": float(GREEDY_ITEMS)}
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stderr and "mmhal" in failed.stderr


def test_vlf_eval_local_runs_in_process_without_broker_or_service(ledger_url, tmp_path, monkeypatch):
    """`vlf eval --local`: no broker (the bootstrap address is closed) and no evaluator service;
    the always-"Yes" endpoint scores 50 per MME subtask, the result is in the ledger as the service
    would record it, and a request for an unknown benchmark exits 2 with the reason."""
    build_mme_fixture(tmp_path / "mme", MME_SUBTASKS, MME_IMAGES_PER_SUBTASK, seed=0)
    with serve_in_thread(TestServerConfig(responder=lambda _request: "Yes")) as server:
        registry = write_registry(tmp_path / "registry.yaml", server.base_url, ["served"], 1)
        env = {
            **os.environ,
            "VLF_KAFKA_BOOTSTRAP": "127.0.0.1:9",
            "VLF_LEDGER_URL": ledger_url,
            "VLF_BLOB_URL": str(tmp_path / "blobs"),
            "VLF_REGISTRY_PATH": str(registry),
            "VLF_EVALUATOR_MME_ROOT": str(tmp_path / "mme"),
            "VLF_EVALUATOR_MME_SUBTASKS": json.dumps(MME_SUBTASKS),
            "VLF_EVALUATOR_JOB_LOG_DIR": str(tmp_path / "jobs"),
            "COLUMNS": "200",
        }

        def vlf_eval(*args: str) -> subprocess.CompletedProcess:
            command = [
                sys.executable,
                "-m",
                "vlf.cli",
                "eval",
                "test-model",
                "--endpoint",
                "served",
                "--local",
            ]
            return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=150)

        done = vlf_eval("--benchmark", "mme")
        refused = vlf_eval("--benchmark", "vqav2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout and f"total {50 * len(MME_SUBTASKS):g}" in done.stdout
    [result] = Ledger(ledger_url).iter_facts(ev.EvalResult)
    assert result.status == "completed" and result.model.endpoint_id == "served"
    assert {s: result.metrics[s] for s in MME_SUBTASKS} == {s: 50.0 for s in MME_SUBTASKS}
    assert refused.returncode == 2 and "vqav2" in refused.stderr
