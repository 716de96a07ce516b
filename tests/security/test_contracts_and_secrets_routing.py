"""Attacks by whoever can write to the topics: nothing in an event steers a secret, a path or a crash.

The listener is unauthenticated, so every field of every event is attacker-chosen. Each test is one
attack, asserting what the operator relies on: API keys go only to the endpoints in their registry,
ids never leave their folders, and a bad value is one dead letter with a reason (a ``ContractError``
or ``PermanentError``), never a crash or a poisoned message for the next consumer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import String

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.evaluator.handler import EvaluatorContext, handle_eval_request
from services.evaluator.job import build_answer_backend
from services.evaluator.settings import EvaluatorSettings
from shared.backends.base import ChatMessage, GenerationRequest
from shared.contracts import events as ev
from shared.contracts.codec import decode, encode
from shared.contracts.topics import ALL_TOPICS, topic
from shared.errors import ContractError, PermanentError
from shared.jobs import LocalProcessLauncher, UnlaunchableJob
from shared.ledger import Ledger
from shared.ledger import tables as t
from shared.ledger.store import _fact_row
from tests import factories

REGISTRY_KEY = "sk-registry-Zq9xk"


def payload(event: ev.Event, **changes: Any) -> dict:
    """The event as JSON, with dotted paths (``model.base_url``) set to attacker values."""
    data = json.loads(encode(event))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    return data


def sample(model: type[ev.Event]) -> ev.Event:
    return next(e for e in factories.one_of_each() if type(e) is model)


def refused(spec_name: str, raw: dict | bytes) -> ContractError:
    spec = topic(spec_name)
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(ContractError) as caught:
        decode(spec, data)
    return caught.value


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


# --- 1. an event never decides where a secret goes -----------------------------------------------


def test_an_eval_request_cannot_name_the_endpoint_the_api_key_is_sent_to() -> None:
    attack = payload(sample(ev.EvalRequest), **{"model.base_url": "http://127.0.0.1:9/v1"})

    error = refused("vlf.eval.requests.v1", attack)

    assert "model.base_url" in str(error) and "not permitted" in str(error)


def test_eval_results_recorded_before_endpoint_ids_still_load_from_the_ledger(ledger: Ledger) -> None:
    result = sample(ev.EvalResult)
    ledger.record(result)
    old_row = json.loads(encode(result))
    old_row["model"]["base_url"] = None  # what every ledger row held before endpoint_id
    with ledger.engine.begin() as connection:
        connection.execute(t.EvalResultRow.__table__.update().values(payload=old_row))

    assert list(ledger.iter_facts(ev.EvalResult)) == [result]


def test_no_event_has_a_field_that_holds_a_url_or_a_secret() -> None:
    def fields(model: type[BaseModel], prefix: str = "") -> list[str]:
        names = []
        for name, info in model.model_fields.items():
            names.append(prefix + name)
            for arg in [info.annotation, *getattr(info.annotation, "__args__", ())]:
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    names += fields(arg, f"{prefix}{name}.")
        return names

    suspicious = ("url", "host", "endpoint_address", "api_key", "token", "secret", "password")
    found = [
        f"{spec.name}: {name}"
        for spec in ALL_TOPICS
        for name in fields(spec.model)
        if any(word in name.rsplit(".", 1)[-1] for word in suspicious) and not name.endswith("_tokens")
    ]
    assert found == []


def test_the_evaluator_reaches_an_endpoint_only_by_registry_id_with_the_registry_key(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.evaluator.handler import UnknownEndpointError

    monkeypatch.setenv("VLF_TEST_ENDPOINT_KEY", REGISTRY_KEY)
    with serve_in_thread(TestServerConfig(api_key=REGISTRY_KEY)) as server:
        registry = tmp_path / "registry.yaml"
        entry = {
            "id": "served",
            "backend": "openai",
            "model": "test-model",
            "base_url": server.base_url,
            "api_key_env": "VLF_TEST_ENDPOINT_KEY",
        }
        registry.write_text(yaml.safe_dump({"models": [entry]}))
        settings = EvaluatorSettings(job_log_dir=tmp_path / "jobs")
        ctx = EvaluatorContext(ledger=ledger, settings=settings, registry_path=registry)
        model = ev.ModelRef(name="served", base_model="test-model", endpoint_id="served")

        handle_eval_request(ev.EvalRequest(eval_id="eval-1", model=model, benchmarks=["mme"]), ctx)
        backend = build_answer_backend(model, settings, registry)
        try:
            [result] = backend.generate([GenerationRequest(messages=[ChatMessage(role="user", text="hi")])])
        finally:
            backend.close()

        assert result.text  # the server answers only requests carrying the registry's key
        unknown = ev.ModelRef(name="x", base_model="test-model", endpoint_id="attacker")
        with pytest.raises(
            UnknownEndpointError, match=r"'attacker' is not in the registry.*served"
        ) as caught:
            handle_eval_request(ev.EvalRequest(eval_id="eval-2", model=unknown, benchmarks=["mme"]), ctx)
        assert isinstance(caught.value, PermanentError)  # dead-lettered with the reason
        assert ledger.job("eval-2") is None


# --- 2. an id never becomes a path outside its folder ----------------------------------------------

PATH_IDS = [
    ("vlf.train.requests.v1", ev.TrainRequest, "job_id"),
    ("vlf.train.progress.v1", ev.TrainProgress, "job_id"),
    ("vlf.checkpoints.v1", ev.Checkpoint, "job_id"),
    ("vlf.eval.requests.v1", ev.EvalRequest, "eval_id"),
    ("vlf.eval.results.v1", ev.EvalResult, "eval_id"),
]


@pytest.mark.parametrize("hostile", ["/etc/cron.d/x", "../escaped", "a/../../b", "..", "Job 1", "x" * 64, ""])
@pytest.mark.parametrize(("topic_name", "model", "field"), PATH_IDS)
def test_an_id_that_is_a_path_or_no_resource_name_is_a_contract_error(
    topic_name: str, model: type[ev.Event], field: str, hostile: str
) -> None:
    error = refused(topic_name, payload(sample(model), **{field: hostile}))

    assert field in str(error)


@pytest.mark.parametrize("ok", ["cluster-1", "eval-1712-abc123", "demo-1712", "j", "0" * 32, "a.b_c-d"])
def test_the_ids_the_cli_and_services_write_are_still_accepted(ok: str) -> None:
    assert ev.TrainRequest(job_id=ok, base_model="tiny").job_id == ok
    assert ev.EvalRequest(eval_id=ok, model=ev.ModelRef(name="m", base_model="b"), benchmarks=["mme"])


def test_a_job_log_cannot_be_written_outside_its_folder(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(module="this", log_dir=tmp_path / "logs")  # the id skipped the contract

    with pytest.raises(UnlaunchableJob, match="escapes"):
        launcher.start("../escaped", 1)

    assert not (tmp_path / "escaped.log").exists()
    assert launcher.running() == set()


@pytest.mark.parametrize("part", ["../x", "/etc/cron.d/x", "a/../../x", ".."])
def test_within_refuses_a_path_that_leaves_its_root(tmp_path: Path, part: str) -> None:
    from shared.paths import PathEscapeError, within

    with pytest.raises(PathEscapeError, match="escapes") as caught:
        within(tmp_path / "root", part)

    assert isinstance(caught.value, PermanentError)
    assert within(tmp_path / "root", "job-1", "out") == (tmp_path / "root" / "job-1" / "out").resolve()


# --- 3. non-finite floats are refused, not re-encoded as null ---------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("model", "changes"),
    [
        (ev.Pair, {"chosen.score": NAN}),
        (ev.Pair, {"margin": INF}),
        (ev.Checkpoint, {"metrics": {"loss": NAN}}),
        (ev.TrainProgress, {"loss": -INF}),
        (ev.Response, {"sampling": {"temperature": INF}}),
        (ev.EvalResult, {"metrics": {"total": INF}}),
        (ev.EvalResult, {"details": {"per_subtask": {"ocr": NAN}}}),
    ],
)
def test_a_producer_cannot_build_an_event_with_a_non_finite_float(
    model: type[ev.Event], changes: dict
) -> None:
    data = sample(model).model_dump()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value

    with pytest.raises(ValidationError, match="finite|NaN|inf"):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("topic_name", "model", "field", "literal"),
    [
        ("vlf.pairs.v1", ev.Pair, '"score":4.67', '"score":NaN'),
        ("vlf.checkpoints.v1", ev.Checkpoint, '"metrics":{}', '"metrics":{"loss":Infinity}'),
        ("vlf.eval.results.v1", ev.EvalResult, '"details":{}', '"details":{"x":-Infinity}'),
    ],
)
def test_a_non_finite_float_on_a_topic_is_a_contract_error(
    topic_name: str, model: type[ev.Event], field: str, literal: str
) -> None:
    raw = encode(sample(model))
    assert field.encode() in raw
    error = refused(topic_name, raw.replace(field.encode(), literal.encode()))

    assert "finite" in str(error) or "NaN" in str(error)


def test_a_checkpoint_with_a_diverged_loss_is_published_without_that_metric() -> None:
    from services.trainer.job import finite_metrics

    assert finite_metrics({"loss": NAN, "steps": 3, "margin": INF, "name": "x"}) == {"steps": 3.0}
    assert not any(math.isnan(v) for v in finite_metrics({"loss": 0.5}).values())


# --- 4. a string longer than its ledger column is a contract error, not a database crash ------------


def _source_field(event: BaseModel, value: str) -> list[tuple[type[BaseModel], str]]:
    """Every (model, field) of ``event``, nested models included, whose value is ``value``."""
    found = []
    for name in type(event).model_fields:
        attr = getattr(event, name)
        if attr == value and isinstance(attr, str):
            found.append((type(event), name))
        elif isinstance(attr, BaseModel):
            found += _source_field(attr, value)
    return found


def _max_length(model: type[BaseModel], field: str) -> int | None:
    schema = model.model_json_schema()["properties"][field]
    if "enum" in schema or "const" in schema:
        return max(len(v) for v in schema.get("enum", [schema.get("const")]))
    return schema.get("maxLength")


def test_every_bounded_ledger_column_is_fed_by_an_event_field_no_longer_than_it() -> None:
    events = factories.one_of_each()
    events[0] = events[0].model_copy(update={"source": "the-source"})  # "" would match every empty field
    too_long = []
    for fact in events:
        try:
            table, values = _fact_row(fact)
        except TypeError:  # not a fact: requests and progress are kept as jobs, checked below
            continue
        for column in table.__table__.columns:
            if not isinstance(column.type, String) or column.type.length is None:
                continue
            sources = _source_field(fact, values[column.name])
            assert sources, f"{table.__tablename__}.{column.name}: no event field found"
            for model, field in sources:
                limit = _max_length(model, field)
                if limit is None or limit > column.type.length:
                    too_long.append(f"{model.__name__}.{field} ({limit}) -> {column} ({column.type.length})")
    jobs_id = t.JobRow.__table__.c.id.type.length  # the trainer and evaluator queue jobs by these ids
    for model, field in ((ev.TrainRequest, "job_id"), (ev.EvalRequest, "eval_id")):
        limit = _max_length(model, field)
        if limit is None or limit > jobs_id:
            too_long.append(f"{model.__name__}.{field} ({limit}) -> jobs.id ({jobs_id})")
    assert too_long == []


@pytest.mark.parametrize(
    ("topic_name", "model", "field", "length"),
    [
        ("vlf.instructions.v1", ev.Instruction, "source", 129),
        ("vlf.responses.v1", ev.Response, "model_id", 129),
        ("vlf.annotations.v1", ev.Annotation, "judge_id", 129),
        ("vlf.pairs.v1", ev.Pair, "strategy", 65),
        ("vlf.eval.results.v1", ev.EvalResult, "benchmark", 65),
        ("vlf.checkpoints.v1", ev.Checkpoint, "checkpoint_id", 129),
    ],
)
def test_an_oversized_string_is_a_contract_error_naming_the_field(
    topic_name: str, model: type[ev.Event], field: str, length: int
) -> None:
    error = refused(topic_name, payload(sample(model), **{field: "x" * length}))

    assert field in str(error) and "at most" in str(error)
