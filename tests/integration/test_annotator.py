"""The annotator on the real broker, judging through the real openai client against a local judge server."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter

import httpx
import openai
import pytest

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.annotator.rubric import build_all_in_one_prompt
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.events import Aspect
from shared.ledger import Ledger
from shared.ledger.tables import JudgeCallRow
from shared.runtime.admin import EventPublisher
from shared.runtime.dlq import read_dlq_headers
from tests.integration.judge_responder import expected_rating, judge_responder
from tests.integration.kafka_helpers import committed, consume_all, wait_until
from tests.integration.pipeline_helpers import Pipeline, png, write_registry

JUDGES = lambda url: [  # noqa: E731
    {"id": "judge-md", "model": "test-model", "base_url": url, "timeout_s": 10},
    {"id": "judge-json", "model": "test-model", "base_url": url, "timeout_s": 10, "structured_output": True},
]


@pytest.fixture
def judge_server():
    running = serve_in_thread(TestServerConfig(responder=judge_responder, latency_s=0.05))
    yield running
    running.stop()


def _calls(server) -> list[dict]:
    return httpx.get(server.base_url.removesuffix("/v1") + "/_calls").json()


def _responses(pipeline: Pipeline, prompts: list[str]) -> list[ev.Response]:
    blobs = BlobStore(str(pipeline.blob_dir))
    uri = blobs.put(png("red"), suffix=".png")
    out = []
    for n, prompt in enumerate(prompts):
        inst = ev.Instruction(
            instruction_id=f"inst-ann-{n:04d}", prompt=prompt, image_uris=[uri], models=["m1", "m2"]
        )
        for model in ("m1", "m2"):
            out.append(
                ev.Response(
                    response_id=f"{inst.instruction_id}-{model}",
                    instruction=inst,
                    model_id=model,
                    sampling={"temperature": 0.7},
                    text=f"{model} says the square in {n} is red",
                    status="answered",
                    finish_reason="stop",
                )
            )
    return out


@pytest.mark.parametrize("judge_id", ["judge-md", "judge-json"])
def test_ratings_land_in_the_ledger_and_on_the_topic(
    kafka_bootstrap, namespace, ledger_url, tmp_path, judge_server, judge_id
):
    registry = write_registry(
        tmp_path / "registry.yaml", judge_server.base_url, ["m1", "m2"], 2, JUDGES(judge_server.base_url)
    )
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    prompts = [f"What colour is square {n}?" for n in range(4)] + [
        "GARBAGE-ONCE what?",
        "GARBAGE-ALWAYS what?",
    ]
    responses = _responses(pipeline, prompts)
    try:
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish(responses)
        pipeline.start("services.annotator", judge_id, VLF_ANNOTATOR_JUDGE_ID=judge_id)
        wait_until(lambda: ledger.count(ev.Annotation) == 5, 90, "5 annotations")
        dead = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.dlq, expect=1)
    finally:
        failures = pipeline.stop_all()
    assert not failures, failures
    for annotation in ledger.iter_facts(ev.Annotation):
        assert annotation.judge_id == judge_id and annotation.usage.calls >= 1
        assert sorted(r.shown_position for r in annotation.rated) == [0, 1]
        for rated in annotation.rated:
            for aspect in Aspect:
                assert rated.ratings[aspect].rating == expected_rating(rated.text, aspect)
    published = consume_all(kafka_bootstrap, namespace + topics.ANNOTATIONS.name, expect=5)
    assert len({json.loads(r.value)["annotation_id"] for r in published}) == 5
    assert [read_dlq_headers(d.headers)["error.class"] for d in dead] == ["RatingParseError"]
    with ledger._session() as s:
        kept = s.query(JudgeCallRow).filter(JudgeCallRow.instruction_id == "inst-ann-0005").all()
    assert len(kept) == 2 and all("rather not rate" in k.raw_reply for k in kept), "paid replies are kept"
    calls = _calls(judge_server)
    assert len(calls) == 4 + 2 + 2, "one call each, plus one repair for each garbage reply"


def test_sigkill_after_the_judge_replied_never_pays_twice(
    kafka_bootstrap, namespace, ledger_url, tmp_path, judge_server
):
    registry = write_registry(
        tmp_path / "registry.yaml", judge_server.base_url, ["m1", "m2"], 2, JUDGES(judge_server.base_url)
    )
    pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    responses = _responses(pipeline, [f"Describe square {n}." for n in range(6)])
    with EventPublisher(pipeline.settings) as publisher:
        publisher.publish(responses)
    victim = pipeline.start(
        "services.annotator", "victim", VLF_ANNOTATOR_JUDGE_ID="judge-md", VLF_COMMIT_INTERVAL_S="60"
    )
    wait_until(lambda: ledger.count(ev.Annotation) >= 1, 60, "a first judge reply")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert _committed(kafka_bootstrap, namespace + topics.RESPONSES.name) == 0, (
        "the kill must land before any commit"
    )
    rated_before = ledger.count(ev.Annotation)
    with ledger._session() as s:
        replied_before = {row.instruction_id for row in s.query(JudgeCallRow)}
    try:
        pipeline.start("services.annotator", "restarted", VLF_ANNOTATOR_JUDGE_ID="judge-md")
        wait_until(lambda: ledger.count(ev.Annotation) == 6, 60, "all 6 annotations")
        wait_until(
            lambda: _committed(kafka_bootstrap, namespace + topics.RESPONSES.name) == 12, 30, "commits"
        )
    finally:
        failures = [f for f in pipeline.stop_all() if "victim" not in f]
    assert not failures, failures
    assert rated_before >= 1 and replied_before
    # A call in flight at the kill never reached the ledger, so it is asked again; a reply that did
    # reach the ledger is never paid for twice.
    calls = Counter(
        f"inst-ann-{int(_SQUARE.search(c['first_user_text'])[1]):04d}" for c in _calls(judge_server)
    )
    assert set(calls) == {f"inst-ann-{n:04d}" for n in range(6)}
    assert {i: calls[i] for i in replied_before} == dict.fromkeys(replied_before, 1), calls
    assert max(calls.values()) <= 2, calls
    with ledger._session() as s:
        assert s.query(JudgeCallRow).count() == 6, "one kept reply per instruction"


_SQUARE = re.compile(r"Describe square (\d+)\.")


def _committed(bootstrap: str, topic_name: str, group: str = "vlf-annotator.judge-md") -> int:
    return committed(bootstrap, topic_name, group)


def test_cached_prompt_tokens_are_recorded_and_priced_at_the_cached_rate(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    """Through the real client against a server that reports prefix-cache hits: the rubric the judge
    prompt puts first is served from the cache on later calls, the ledger keeps what the server
    reported, and spend is split into full-price input, cached input and output at the registry's
    prices."""
    prices = {"price_per_1k_input": 10.0, "price_per_1k_cached_input": 2.5, "price_per_1k_output": 30.0}
    config = TestServerConfig(responder=judge_responder, prefix_cache_block_tokens=16)
    with serve_in_thread(config) as server:
        judge = {"id": "judge-md", "model": "test-model", "base_url": server.base_url, "concurrency": 1}
        registry = write_registry(
            tmp_path / "registry.yaml", server.base_url, ["m1", "m2"], 2, [{**judge, **prices}]
        )
        pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
        ledger = Ledger(ledger_url)
        ledger.migrate()
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish(_responses(pipeline, [f"What colour is square {n}?" for n in range(4)]))
        try:
            pipeline.start("services.annotator", "judge", VLF_ANNOTATOR_JUDGE_ID="judge-md")
            wait_until(lambda: ledger.count(ev.Annotation) == 4, 90, "4 annotations")
        finally:
            failures = pipeline.stop_all()
        calls = _calls(server)
    assert not failures, failures
    served = sorted(call["cached_prompt_tokens"] for call in calls)
    rubric_blocks = len(build_all_in_one_prompt("any", ["a", "b"]).fixed.split()) // 16 * 16
    assert served[0] == 0, "the first call finds nothing cached"
    assert served[1] >= rubric_blocks, "later calls are served the rubric and reply format from the cache"

    spend = ledger.judge_spend()["judge-md"]
    prompt, cached = sum(c["prompt_tokens"] for c in calls), sum(served)
    completion = sum(c["completion_tokens"] for c in calls)
    assert (spend.calls, spend.prompt_tokens, spend.cached_prompt_tokens) == (4, prompt, cached)
    assert spend.input_usd == pytest.approx((prompt - cached) * 10.0 / 1000)
    assert spend.cached_input_usd == pytest.approx(cached * 2.5 / 1000)
    assert spend.output_usd == pytest.approx(completion * 30.0 / 1000)
    assert spend.total_usd == pytest.approx(spend.input_usd + spend.cached_input_usd + spend.output_usd)
    annotations = list(ledger.iter_facts(ev.Annotation))
    assert sum(a.usage.cached_prompt_tokens for a in annotations) == cached
    assert sum(a.usage.cost_usd for a in annotations) == pytest.approx(spend.total_usd)


def test_a_batch_judge_survives_a_sigkill_between_upload_and_results(
    kafka_bootstrap, namespace, ledger_url, tmp_path
):
    """The annotator is killed while its batch is at the provider: the restarted one finds the batch
    it sent, uploads nothing again, and rates every instruction once from the batch's replies."""
    config = TestServerConfig(responder=judge_responder, batch_completion_s=8.0)
    with serve_in_thread(config) as server:
        judge = {"id": "judge-md", "model": "test-model", "base_url": server.base_url, "batch": True}
        judge |= {"price_per_1k_input": 1.0, "price_per_1k_output": 2.0}
        registry = write_registry(tmp_path / "registry.yaml", server.base_url, ["m1", "m2"], 2, [judge])
        pipeline = Pipeline(kafka_bootstrap, namespace, ledger_url, tmp_path, registry)
        ledger = Ledger(ledger_url)
        ledger.migrate()
        batch_env = {
            "VLF_ANNOTATOR_JUDGE_ID": "judge-md",
            "VLF_ANNOTATOR_BATCH_MAX_WAIT_S": "0",
            "VLF_ANNOTATOR_BATCH_POLL_INTERVAL_S": "0.3",
        }
        with EventPublisher(pipeline.settings) as publisher:
            publisher.publish(_responses(pipeline, [f"Describe square {n}." for n in range(6)]))
        victim = pipeline.start("services.annotator", "victim", **batch_env)

        def all_sent() -> bool:
            batches = ledger.open_batches("judge-md")
            return sum(b.requests for b in batches) == 6 and all(b.batch_id for b in batches)

        wait_until(all_sent, 60, "all 6 judge calls sent in batches")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert ledger.count(ev.Annotation) == 0, "the kill must land before the batch's results"
        try:
            pipeline.start("services.annotator", "restarted", **batch_env)
            wait_until(lambda: ledger.count(ev.Annotation) == 6, 90, "all 6 annotations")
            published = consume_all(kafka_bootstrap, namespace + topics.ANNOTATIONS.name, expect=6)
        finally:
            failures = [f for f in pipeline.stop_all() if "victim" not in f]
        assert not failures, failures
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        uploaded = [
            json.loads(line)["custom_id"]
            for file in sdk.files.list(purpose="batch")
            for line in sdk.files.content(file.id).text.splitlines()
            if line
        ]
        calls = _calls(server)
    assert len(uploaded) == len(set(uploaded)) == 6, "no request uploaded twice"
    assert len(calls) == 6 and all(c["batch_id"] for c in calls), "every call ran once, in a batch"
    assert len({json.loads(r.value)["annotation_id"] for r in published}) == 6
    for annotation in ledger.iter_facts(ev.Annotation):
        for rated in annotation.rated:
            for aspect in Aspect:
                assert rated.ratings[aspect].rating == expected_rating(rated.text, aspect)
    assert ledger.batch_request_counts("judge-md") == {"done": 6}
    tokens_in, tokens_out = (sum(c[k] for c in calls) for k in ("prompt_tokens", "completion_tokens"))
    spend = ledger.judge_spend()["judge-md"]
    assert (
        spend.batch_usd == spend.total_usd == pytest.approx((tokens_in * 1.0 + tokens_out * 2.0) / 1000 / 2)
    )
