"""The `vlf` command line against the real broker and ledger: submit refuses bad lines with reasons,
and `vlf status` numbers equal the ledger's counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from tests import factories
from tests.integration.kafka_helpers import consume_all, service_env
from tests.integration.pipeline_helpers import png, write_registry


def _vlf(env: dict, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlf.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_and_status(kafka_bootstrap, namespace, ledger_url, tmp_path):
    (tmp_path / "img").mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        (tmp_path / "img" / f"{i}.png").write_bytes(png(colour))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    lines = [
        json.dumps({"image": f"img/{i}.png", "prompt": f"What colour is shape {i}?", "reference": c})
        for i, c in enumerate(["red", "green", "blue"])
    ]
    lines += [
        "{not json",
        json.dumps({"image": "img/missing.png", "prompt": "where?"}),
        json.dumps({"image": "img/broken.png", "prompt": "what?"}),
        json.dumps({"image": "../../etc/passwd", "prompt": "escape?"}),
    ]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    registry = write_registry(tmp_path / "registry.yaml", "http://127.0.0.1:9/v1", ["m1", "m2", "m3"], k=2)
    env = service_env(
        kafka_bootstrap,
        namespace,
        ledger_url,
        VLF_BLOB_URL=str(tmp_path / "blobs"),
        VLF_REGISTRY_PATH=str(registry),
        COLUMNS="200",
    )
    result = _vlf(env, "submit", str(tmp_path / "batch.jsonl"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "published 3 instructions" in result.stdout
    assert "batch.jsonl:4: invalid JSON" in result.stdout
    assert "batch.jsonl:5" in result.stdout and "missing.png" in result.stdout
    assert "batch.jsonl:6" in result.stdout and "batch.jsonl:7" in result.stdout
    ledger = Ledger(ledger_url)
    instructions = list(ledger.iter_facts(ev.Instruction))
    assert len(instructions) == 3
    assert all(len(i.models) == 2 and i.reference for i in instructions)
    published = consume_all(kafka_bootstrap, namespace + topics.INSTRUCTIONS.name, expect=3)
    assert sorted(r.key.decode() for r in published) == sorted(i.instruction_id for i in instructions)

    status = _vlf(env, "status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    numbers = json.loads(status.stdout)
    assert numbers["stages"]["submitted"] == ledger.count(ev.Instruction) == 3
    assert numbers["stages"]["answered"] == ledger.count(ev.Response) == 0
    assert numbers["model_spend_usd"] == {}


def test_status_charges_priced_models_for_their_answers(kafka_bootstrap, namespace, ledger_url, tmp_path):
    registry_path = write_registry(tmp_path / "registry.yaml", "http://127.0.0.1:9/v1", ["api", "local"], k=2)
    registry = yaml.safe_load(registry_path.read_text())
    registry["models"][0] |= {"price_per_1k_input": 0.01, "price_per_1k_output": 0.03}
    registry_path.write_text(yaml.safe_dump(registry))
    ledger = Ledger(ledger_url)
    ledger.migrate()
    inst = factories.instruction()
    ledger.record(
        inst,
        factories.response(inst, "api").model_copy(update={"prompt_tokens": 1500, "completion_tokens": 200}),
        factories.response(inst, "local").model_copy(
            update={"prompt_tokens": 1500, "completion_tokens": 200}
        ),
    )
    env = service_env(kafka_bootstrap, namespace, ledger_url, VLF_REGISTRY_PATH=str(registry_path))

    status = _vlf(env, "status", "--json", cwd=tmp_path)

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["model_spend_usd"] == {"api": pytest.approx(1.5 * 0.01 + 0.2 * 0.03)}


def test_eval_names_a_served_model_by_its_registry_id(kafka_bootstrap, namespace, ledger_url, tmp_path):
    env = service_env(kafka_bootstrap, namespace, ledger_url)
    args = ["eval", "Qwen/Qwen-VL-Chat", "--benchmark", "mme", "--name", "served"]

    result = _vlf(env, *args, "--endpoint", "qwen-vl-chat", cwd=tmp_path)
    refused = _vlf(env, *args, "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    [record] = consume_all(kafka_bootstrap, namespace + topics.EVAL_REQUESTS.name, expect=1)
    request = ev.EvalRequest.model_validate_json(record.value)
    assert (request.model.base_model, request.model.endpoint_id) == ("Qwen/Qwen-VL-Chat", "qwen-vl-chat")
    assert refused.returncode != 0 and "--base-url" in refused.stderr


def test_train_publishes_a_recipe_files_values_with_options_on_top(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    env = service_env(kafka_bootstrap, namespace, ledger_url)
    (tmp_path / "train.yaml").write_text("beta: 0.3\nnum_train_epochs: 1\nlora:\n  r: 8\n")
    (tmp_path / "bad.yaml").write_text("num_epochs: 1\n")

    result = _vlf(
        env, "train", "tiny", "--config", "train.yaml", "--max-steps", "5", "--job-id", "j1", cwd=tmp_path
    )
    refused = _vlf(env, "train", "tiny", "--config", "bad.yaml", "--job-id", "j2", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    [record] = consume_all(kafka_bootstrap, namespace + topics.TRAIN_REQUESTS.name, expect=1)
    request = ev.TrainRequest.model_validate_json(record.value)
    assert (request.job_id, request.hparams.beta, request.hparams.num_train_epochs) == ("j1", 0.3, 1.0)
    assert (request.hparams.max_steps, request.lora.r) == (5, 8)
    assert refused.returncode == 2 and "unknown key num_epochs" in refused.stderr
