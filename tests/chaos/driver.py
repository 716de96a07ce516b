"""The chaos driver and the end-state checker, shared by the CI chaos test and ``bench/bench_chaos.py``.

The driver runs one timeline in its own thread: publish a batch of instructions, wait a random
while, SIGKILL a random service (its whole process group), restart it after a short random pause,
and once, after ``broker_restart_after_kills`` kills, restart the broker on its data dir. It keeps
going until every batch is out and ``min_kills`` kills happened.

The checker reads the ledger and every topic from the beginning and lists every way the end state
differs from what the pipeline promises (an empty list: all good).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from kafka.errors import KafkaError
from pydantic import BaseModel, Field

from devkit.kafka_local import BrokerConfig, restart_broker, start_broker, stop_broker
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.pair_builder.rules import PairRule, build_pairs
from services.pair_builder.split import split_of
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import encode
from shared.ledger import Ledger
from shared.ledger.tables import JudgeCallRow
from shared.registry import Registry
from shared.runtime.admin import EventPublisher, ensure_topics
from shared.runtime.dlq import read_dlq_headers
from shared.settings import CommonSettings
from tests.chaos.stall import StallDetector
from tests.integration.judge_responder import expected_rating, judge_responder
from tests.integration.kafka_helpers import consume_all, produce, service_env, start_process
from tests.integration.pipeline_helpers import COLOURS, png

MODEL_IDS = ("m1", "m2", "m3")
JUDGE_ID = "judge"
PROMPT = re.compile(r"Chaos instruction (\d{5}):")


class ChaosPlan(BaseModel):
    """Sizes and timings of one chaos run."""

    instructions: int = Field(120, ge=1)
    batches: int = Field(12, ge=1)
    min_kills: int = Field(12, ge=0)
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    restart_after_s: tuple[float, float] = (0.2, 1.5)
    broker_restart_after_kills: int = Field(5, ge=0)
    seed: int = 7


def chaos_prompt(n: int) -> str:
    return f"Chaos instruction {n:05d}: what colour is the square, and how sure are you?"


def instruction_number(text: str) -> int | None:
    match = PROMPT.search(text)
    return int(match.group(1)) if match else None


def make_instructions(count: int, blobs: BlobStore, registry: Registry) -> list[ev.Instruction]:
    """Unique prompts (so judge calls can be counted by prompt), hex ids, k models from the registry."""
    uris = {colour: blobs.put(png(colour), suffix=".png") for colour in COLOURS}
    out = []
    for n in range(count):
        inst_id = hashlib.sha256(f"chaos|{n}".encode()).hexdigest()[:32]
        out.append(
            ev.Instruction(
                instruction_id=inst_id,
                prompt=chaos_prompt(n),
                image_uris=[uris[list(COLOURS)[n % len(COLOURS)]]],
                models=registry.assign(inst_id),
            )
        )
    return out


def poison_messages() -> list[tuple[bytes, bytes | None]]:
    """Bad records for the instructions topic: each sampler must dead-letter every one of them."""
    valid = json.loads(
        encode(ev.Instruction(instruction_id="poison-template-0000", prompt="p", models=["m1"]))
    )
    return [
        (b"poison-json", b"{not json"),
        (b"poison-version", json.dumps({**valid, "schema_version": 99}).encode()),
        (b"poison-missing", json.dumps({"schema_version": 1, "prompt": "no id"}).encode()),
        (b"poison-type", json.dumps({**valid, "samples_per_model": "many"}).encode()),
        (b"poison-extra", json.dumps({**valid, "surprise": 1}).encode()),
        (b"poison-tombstone", None),
    ]


def write_registry(path: Path, model_url: str, judge_url: str, k: int = 2, timeout_s: float = 2.0) -> Path:
    """Three models on one test server and one all-in-one markdown judge, both with short timeouts.

    Each model has its own system prompt, so the test server's hash-of-prompt answers differ by model
    (identical answers would all tie and make no pairs)."""
    sampling = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32}
    registry = {
        "models_per_instruction": k,
        "models": [
            {"id": m, "backend": "openai", "model": "test-model", "base_url": model_url,
             "concurrency": 8, "timeout_s": timeout_s, "sampling": sampling,
             "system_prompt": f"You are model {m}."}
            for m in MODEL_IDS
        ],
        "judges": [
            {"id": JUDGE_ID, "model": "test-model", "base_url": judge_url, "concurrency": 8,
             "timeout_s": timeout_s}
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(registry))
    return path


# --- services ------------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    group: str
    topics: list[str]
    process: subprocess.Popen | None = None
    generation: int = 0


class Fleet:
    """The pipeline's service processes: start, SIGKILL (the whole process group), stop."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}

    def add(self, service: Service) -> None:
        self.services[service.name] = service

    def start(self, name: str) -> None:
        service = self.services[name]
        service.generation += 1
        log = self.log_dir / f"{name}.{service.generation}.log"
        service.process = start_process(service.module, service.env, log)

    def kill(self, name: str) -> None:
        process = self.services[name].process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def crashed(self) -> list[str]:
        """Services whose current process exited on its own (nobody killed it)."""
        return [
            f"{s.name} exited {s.process.returncode}; log {self.log_dir / f'{s.name}.{s.generation}.log'}"
            for s in self.services.values()
            if s.process is not None and s.process.poll() is not None
        ]

    def stop_all(self, timeout_s: float = 60) -> list[str]:
        """SIGTERM each service; the tail of the log of every one that did not exit 0."""
        bad = []
        for service in self.services.values():
            if service.process is None:
                continue
            if service.process.poll() is None:
                service.process.terminate()
            try:
                code = service.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                code = service.process.wait(timeout=30)
            log = self.log_dir / f"{service.name}.{service.generation}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            if code == -signal.SIGTERM and "runtime started" not in text:
                continue  # restarted just before the stop, still importing: it had taken no work
            if code != 0:
                bad.append(f"{service.name} exited {code}:\n{text[-3000:]}")
        return bad

    def groups(self) -> dict[str, list[str]]:
        return {s.group: s.topics for s in self.services.values()}


def pipeline_store(
    bootstrap: str, namespace: str, work_dir: Path, registry_path: Path
) -> tuple[CommonSettings, Ledger]:
    """Settings of a pipeline run in ``work_dir`` (SQLite ledger, blob folder), the migrated ledger,
    and every topic created."""
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=namespace,
        ledger_url=f"sqlite:///{work_dir / 'ledger.db'}",
        blob_url=str(work_dir / "blobs"),
        registry_path=registry_path,
    )
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    ensure_topics(settings, topics.ALL_TOPICS)
    return settings, ledger


def pipeline_fleet(settings: CommonSettings, base_env: dict[str, str], log_dir: Path) -> Fleet:
    """Three samplers, the annotator for ``JUDGE_ID`` and the pair builder."""
    ns = settings.topic_namespace
    fleet = Fleet(log_dir)
    for model in MODEL_IDS:
        fleet.add(
            Service(model, "services.sampler", {**base_env, "VLF_SAMPLER_MODEL_ID": model},
                    topics.sampler_group(model), [ns + topics.INSTRUCTIONS.name])
        )  # fmt: skip
    fleet.add(
        Service("annotator", "services.annotator", {**base_env, "VLF_ANNOTATOR_JUDGE_ID": JUDGE_ID},
                topics.annotator_group(JUDGE_ID), [ns + topics.RESPONSES.name])
    )  # fmt: skip
    fleet.add(
        Service("pair-builder", "services.pair_builder", base_env, topics.PAIR_BUILDER_GROUP,
                [ns + topics.ANNOTATIONS.name])
    )  # fmt: skip
    return fleet


# --- the driver ----------------------------------------------------------------------------------


@dataclass
class Kill:
    service: str
    at: float  # wall clock (time.time), comparable with the test server's call records


@dataclass(eq=False)  # a Thread must stay hashable
class ChaosDriver(threading.Thread):
    plan: ChaosPlan
    fleet: Fleet
    broker: BrokerConfig
    settings: CommonSettings
    batches: list[list[ev.Instruction]]
    poison: list[tuple[bytes, bytes | None]]
    on_restart: Callable[[str | None], None] = lambda group: None  # group (None: the broker)
    kills: list[Kill] = field(default_factory=list)
    broker_restarts: int = 0
    error: BaseException | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(name="chaos-driver", daemon=True)

    def run(self) -> None:
        try:
            self._timeline()
        except BaseException as exc:  # surfaced by the test's wait loop
            self.error = exc

    def _timeline(self) -> None:
        rng = random.Random(self.plan.seed)
        pending = list(self.batches)
        victims: list[str] = []
        ns = self.settings.topic_namespace
        produce(self.settings.kafka_bootstrap_servers, ns + topics.INSTRUCTIONS.name, self.poison)
        while (pending or len(self.kills) < self.plan.min_kills) and not self.stop_requested.is_set():
            if pending:
                self._publish(pending.pop(0))
            if self.stop_requested.wait(rng.uniform(*self.plan.kill_every_s)):
                return
            if len(self.kills) < self.plan.min_kills:
                if not victims:  # every service is killed once per round, in a random order
                    victims = rng.sample(sorted(self.fleet.services), len(self.fleet.services))
                victim = victims.pop()
                self.fleet.kill(victim)
                self.kills.append(Kill(victim, time.time()))
                time.sleep(rng.uniform(*self.plan.restart_after_s))
                self.fleet.start(victim)
                self.on_restart(self.fleet.services[victim].group)
            if len(self.kills) == self.plan.broker_restart_after_kills and not self.broker_restarts:
                restart_broker(self.broker)
                self.broker_restarts += 1
                self.on_restart(None)

    def _publish(self, batch: list[ev.Instruction]) -> None:
        """Publish with retries: a broker restart may be in its last seconds."""
        for attempt in range(10):
            try:
                with EventPublisher(self.settings) as publisher:
                    publisher.publish(batch)
                return
            except KafkaError:
                if attempt == 9:
                    raise
                time.sleep(2)


# --- the end state -------------------------------------------------------------------------------


@dataclass
class EndState:
    """What the checker found, for the report; ``problems`` empty means the run is correct."""

    problems: list[str]
    counts: dict[str, int]


def _values(bootstrap: str, name: str) -> list:
    return consume_all(bootstrap, name, timeout_s=60)


def check_end_state(
    settings: CommonSettings,
    ledger: Ledger,
    instructions: list[ev.Instruction],
    poison: list[tuple[bytes, bytes | None]],
    judge_calls: list[dict],
    kills: list[Kill],
    judge_call_window_s: float,
) -> EndState:
    """Every promise of the pipeline, checked against the ledger and the topics."""
    problems: list[str] = []
    bootstrap, ns = settings.kafka_bootstrap_servers, settings.topic_namespace
    by_id = {i.instruction_id: i for i in instructions}

    responses = list(ledger.iter_facts(ev.Response))
    ids = Counter(r.response_id for r in responses)
    problems += [f"response {rid} is in the ledger {n} times" for rid, n in ids.items() if n > 1]
    models_by_inst: dict[str, list[str]] = defaultdict(list)
    for r in responses:
        models_by_inst[r.instruction_id].append(r.model_id)
    for inst in instructions:
        got = sorted(models_by_inst.get(inst.instruction_id, []))
        if got != sorted(inst.models):
            problems.append(f"instruction {inst.instruction_id}: answers by {got}, assigned {inst.models}")
    problems += [f"answers for unknown instruction {i}" for i in models_by_inst if i not in by_id]
    on_topic = {json.loads(r.value)["response_id"] for r in _values(bootstrap, ns + topics.RESPONSES.name)}
    problems += [f"response {rid} on the topic but not in the ledger" for rid in on_topic - set(ids)]
    problems += [f"response {rid} in the ledger but never published" for rid in set(ids) - on_topic]

    annotations = list(ledger.iter_facts(ev.Annotation))
    per_inst = Counter(a.instruction_id for a in annotations if a.judge_id == JUDGE_ID)
    for inst in instructions:
        if per_inst[inst.instruction_id] != 1:
            problems.append(f"instruction {inst.instruction_id}: {per_inst[inst.instruction_id]} annotations")
    for a in annotations:
        if sorted(r.model_id for r in a.rated) != sorted(by_id[a.instruction_id].models):
            problems.append(f"annotation {a.annotation_id} rated {[r.model_id for r in a.rated]}")
        for rated in a.rated:
            wrong = [x for x in ev.Aspect if rated.ratings[x].rating != expected_rating(rated.text, x)]
            if wrong:
                problems.append(
                    f"annotation {a.annotation_id}: wrong ratings for {rated.response_id}: {wrong}"
                )
    annotation_ids = {a.annotation_id for a in annotations}
    published = {
        json.loads(r.value)["annotation_id"] for r in _values(bootstrap, ns + topics.ANNOTATIONS.name)
    }
    problems += [f"annotation {x} on the topic but not in the ledger" for x in published - annotation_ids]
    problems += [f"annotation {x} never published" for x in annotation_ids - published]

    rule = PairRule()
    expected_pairs: dict[str, tuple] = {}
    for inst in instructions:
        outcome = build_pairs(
            ledger.annotations_for(inst.instruction_id), rule, split_of(inst.instruction_id), (JUDGE_ID,)
        )
        expected_pairs.update({p.pair_id: _pair_summary(p) for p in outcome.pairs})
    in_ledger = {p.pair_id: _pair_summary(p) for p in ledger.iter_facts(ev.Pair)}
    if in_ledger != expected_pairs:
        missing = sorted(set(expected_pairs) - set(in_ledger))[:5]
        extra = sorted(set(in_ledger) - set(expected_pairs))[:5]
        problems.append(f"ledger pairs differ from the rule: missing {missing}, unexpected {extra}")
    pair_topic = {json.loads(r.value)["pair_id"] for r in _values(bootstrap, ns + topics.PAIRS.name)}
    if pair_topic != set(expected_pairs):
        problems.append(
            f"pairs topic differs from the rule: missing {sorted(set(expected_pairs) - pair_topic)[:5]}, "
            f"unexpected {sorted(pair_topic - set(expected_pairs))[:5]}"
        )

    problems += _check_judge_calls(ledger, instructions, judge_calls, kills, judge_call_window_s)
    problems += _check_dlqs(bootstrap, ns, poison)
    return EndState(
        problems=problems,
        counts={
            "instructions": len(instructions),
            "responses": len(responses),
            "responses_on_topic_distinct": len(on_topic),
            "annotations": len(annotations),
            "pairs": len(in_ledger),
            "judge_calls_ok": sum(c["status"] == 200 for c in judge_calls),
            "judge_calls_all": len(judge_calls),
            "kills": len(kills),
        },
    )


def _pair_summary(pair: ev.Pair) -> tuple:
    return pair.chosen.response_id, pair.rejected.response_id, round(pair.margin, 6)


def _check_judge_calls(
    ledger: Ledger,
    instructions: list[ev.Instruction],
    calls: list[dict],
    kills: list[Kill],
    window_s: float,
) -> list[str]:
    """One answered (200) judge call per instruction, and one kept reply in the ledger.

    A second answered call is allowed only when an annotator SIGKILL fell inside the first one
    (from its start to ``window_s`` after): the judge was paid and its reply died with the process.
    """
    problems = []
    answered: dict[int, list[dict]] = defaultdict(list)
    for call in calls:
        number = instruction_number(call["first_user_text"])
        if number is None:
            problems.append(f"judge call {call['id']} carries no chaos instruction prompt")
        elif call["status"] == 200:
            answered[number].append(call)
    annotator_kills = [k.at for k in kills if k.service == "annotator"]
    for n in range(len(instructions)):
        got = sorted(answered.get(n, []), key=lambda c: c["started_at"])
        if not got:
            problems.append(f"instruction {n}: the judge never answered")
        for earlier in got[:-1]:
            start = earlier["started_at"]
            if not any(start <= at <= start + window_s for at in annotator_kills):
                problems.append(f"instruction {n}: {len(got)} paid judge calls, not explained by a kill")
                break
    with ledger._session() as s:  # the ledger has no public query of kept judge replies
        kept = Counter(row.instruction_id for row in s.query(JudgeCallRow).all())
    for inst in instructions:
        if kept[inst.instruction_id] != 1:
            problems.append(
                f"instruction {inst.instruction_id}: {kept[inst.instruction_id]} kept judge replies"
            )
    return problems


def _check_dlqs(bootstrap: str, ns: str, poison: list[tuple[bytes, bytes | None]]) -> list[str]:
    problems = []
    dead = _values(bootstrap, ns + topics.INSTRUCTIONS.dlq)
    poison_keys = {key for key, _ in poison}
    by_service: dict[str, set[bytes]] = defaultdict(set)
    for record in dead:
        headers = read_dlq_headers(record.headers)
        if record.key not in poison_keys:
            problems.append(f"instructions DLQ holds a non-poison record {record.key!r}: {headers}")
        by_service[headers.get("service", "?")].add(record.key)
    for model in MODEL_IDS:
        missed = poison_keys - by_service.get(topics.sampler_group(model), set())
        if missed:
            problems.append(f"sampler {model} did not dead-letter {sorted(missed)}")
    for spec in (topics.RESPONSES, topics.ANNOTATIONS, topics.PAIRS):
        for record in _values(bootstrap, ns + spec.dlq):
            problems.append(f"{spec.dlq} holds {record.key!r}: {read_dlq_headers(record.headers)}")
    return problems


# --- one whole run -------------------------------------------------------------------------------


class ChaosServers(BaseModel):
    """Misbehaviour of the model and judge test servers (short hangs: the registry timeout is 2 s)."""

    latency_s: float = 0.02
    latency_jitter_s: float = 0.1
    fail_429_rate: float = 0.05
    fail_500_rate: float = 0.05
    timeout_rate: float = 0.02
    hang_s: float = 2.5
    retry_after_s: float = 0.2
    timeout_s: float = 2.0


@dataclass
class ChaosReport:
    end_state: EndState
    seconds: float
    kills: list[Kill]
    broker_restarts: int
    service_failures: list[str]


def run_chaos(
    plan: ChaosPlan,
    work_dir: Path,
    broker_port: int,
    servers: ChaosServers | None = None,
    stall_bound_s: float = 60.0,
    timeout_s: float = 300.0,
    progress: Callable[[str], None] = lambda _line: None,
) -> ChaosReport:
    """Start a dedicated broker and the test servers, run the pipeline under the driver, check the end.

    Raises ``ConsumerStalled`` when a group stops committing, ``AssertionError`` when a service
    crashes on its own or the run does not finish within ``timeout_s``.
    """
    servers = servers or ChaosServers()
    broker = BrokerConfig(port=broker_port, data_dir=work_dir / "kafka")
    bootstrap = start_broker(broker)
    misbehave = servers.model_dump(exclude={"timeout_s"})
    model_server = serve_in_thread(TestServerConfig(**misbehave, seed=plan.seed))
    judge_server = serve_in_thread(
        TestServerConfig(**misbehave, seed=plan.seed + 1, responder=judge_responder)
    )
    started = time.monotonic()
    fleet: Fleet | None = None
    stall: StallDetector | None = None
    try:
        registry_path = write_registry(
            work_dir / "registry.yaml",
            model_server.base_url,
            judge_server.base_url,
            timeout_s=servers.timeout_s,
        )
        settings, ledger = pipeline_store(bootstrap, "chaos.", work_dir, registry_path)
        instructions = make_instructions(
            plan.instructions, BlobStore(settings.blob_url), Registry.load(registry_path)
        )
        size = -(-len(instructions) // plan.batches)
        batches = [instructions[i : i + size] for i in range(0, len(instructions), size)]
        poison = poison_messages()
        env = service_env(
            bootstrap,
            settings.topic_namespace,
            settings.ledger_url,
            VLF_HTTP_PORT="0",
            VLF_BLOB_URL=settings.blob_url,
            VLF_REGISTRY_PATH=str(registry_path),
            VLF_RETRY_BACKOFF_S="0.1",
            VLF_RETRY_ATTEMPTS="5",
            VLF_SHUTDOWN_GRACE_S="10",
        )
        (work_dir / "logs").mkdir(exist_ok=True)
        fleet = pipeline_fleet(settings, env, work_dir / "logs")
        for name in fleet.services:
            fleet.start(name)
        stall = StallDetector(bootstrap, fleet.groups(), bound_s=stall_bound_s)
        tracker = stall.tracker
        driver = ChaosDriver(
            plan,
            fleet,
            broker,
            settings,
            batches,
            poison,
            on_restart=lambda group: tracker.restarted(group, time.monotonic()),
        )
        driver.start()
        deadline = started + timeout_s
        last_report = 0.0
        while True:
            if driver.error is not None:
                raise driver.error
            crashed = fleet.crashed() if not driver.is_alive() else []
            assert not crashed, f"services died without being killed: {crashed}"
            lag = stall.total_lag()  # raises ConsumerStalled
            done = ledger.count(ev.Annotation)
            if not driver.is_alive() and lag == 0 and done >= len(instructions):
                break
            now = time.monotonic()
            assert now < deadline, (
                f"chaos run unfinished after {timeout_s:.0f}s: {done} annotations, lag {lag}"
            )
            if now - last_report >= 10:
                progress(f"{now - started:5.0f}s kills={len(driver.kills)} annotations={done} lag={lag}")
                last_report = now
            time.sleep(1.0)
        failures = fleet.stop_all()
        fleet = None
        judge_calls = httpx.get(judge_server.root_url + "/_calls").json()
        end_state = check_end_state(
            settings, ledger, instructions, poison, judge_calls, driver.kills, servers.timeout_s + 1.0
        )
        return ChaosReport(
            end_state, time.monotonic() - started, driver.kills, driver.broker_restarts, failures
        )
    finally:
        if fleet is not None:
            fleet.stop_all(timeout_s=10)
        if stall is not None:
            stall.close()
        model_server.stop()
        judge_server.stop()
        stop_broker(broker)
