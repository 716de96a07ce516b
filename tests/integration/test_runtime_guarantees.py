"""Each guarantee the README gives for the Kafka runtime, on the real broker: retry with backoff then
dead letter, graceful stop within the grace period, a crash that leaves its message uncommitted, the
bounded buffer, commits only after the broker acknowledged the outputs, and rebalances between live
replicas. Each test here failed on a build with that guarantee deliberately broken (issue 30).

The runtime runs in this process where the test needs to look inside a handler (attempts, what is
held), and as the recorder service's process where exit codes, signals and restarts matter."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.contracts import events as ev
from shared.contracts import topics
from shared.contracts.codec import encode
from shared.errors import RetryableError
from shared.runtime.dlq import read_dlq_headers
from shared.runtime.event_loop import LoopThread
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.settings import CommonSettings
from tests import factories
from tests.integration.kafka_helpers import (
    committed,
    consume_all,
    create_topics,
    produce,
    service_env,
    start_process,
    stop_process,
    wait_until,
)

RECORDER = "tests.integration.recorder_service"
INSTRUCTIONS = topics.INSTRUCTIONS


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(params=["thread-lanes", "async-lanes"])
def lane_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _publish_instructions(
    bootstrap: str, namespace: str, count: int, partitions: int
) -> list[ev.Instruction]:
    name = namespace + INSTRUCTIONS.name
    create_topics(bootstrap, [name, namespace + INSTRUCTIONS.dlq], partitions=partitions)
    events = [factories.instruction(i) for i in range(count)]
    produce(bootstrap, name, [(INSTRUCTIONS.key(e).encode(), encode(e)) for e in events])
    return events


def _committed(bootstrap: str, namespace: str, group: str) -> int:
    return committed(bootstrap, namespace + INSTRUCTIONS.name, group)


def _runtime(
    bootstrap: str,
    namespace: str,
    handle: Callable[[ev.Instruction], list[ev.Event]],
    lane_kind: str = "thread-lanes",
    **settings: object,
) -> KafkaRuntime:
    """A runtime in this process consuming instructions with ``handle`` (as a coroutine handler on an
    event loop for ``async-lanes``) and producing responses."""
    loop = LoopThread("test-loop") if lane_kind == "async-lanes" else None
    handler: Callable = handle
    if loop is not None:

        async def handler(event: ev.Instruction) -> list[ev.Event]:
            return handle(event)

    definition = ServiceDefinition(
        name="guarantees",
        group_id=f"{namespace}guarantees",
        routes={INSTRUCTIONS.name: handler},
        produces=(topics.RESPONSES,),
        loop=loop,
    )
    common = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=namespace,
        commit_interval_s=0.2,
        session_timeout_ms=6000,
        **settings,
    )
    return KafkaRuntime(definition, common)


@contextmanager
def _running(runtime: KafkaRuntime) -> Iterator[KafkaRuntime]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        runtime.stop()
        thread.join(timeout=60)
        if runtime.definition.loop is not None:
            runtime.definition.loop.stop()
    assert not thread.is_alive(), "the runtime did not stop"
    assert not errors, errors


def _recorder_env(
    bootstrap: str, namespace: str, ledger_url: str, trace: Path, **extra: str
) -> dict[str, str]:
    """The recorder service on the instructions topic, writing its handler's starts and ends to ``trace``."""
    return service_env(
        bootstrap,
        namespace,
        ledger_url,
        VLF_HTTP_PORT="0",
        RECORDER_TOPICS=INSTRUCTIONS.name,
        RECORDER_TRACE=str(trace),
        **extra,
    )


def _trace(path: Path) -> list[tuple[str, int, str]]:
    """The recorder's RECORDER_TRACE lines as (what, pid, key)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        what, pid, key = line.split(" ")
        out.append((what, int(pid), key))
    return out


# --- retry with backoff, then dead letter -------------------------------------------------------


def test_a_retryable_failure_is_retried_with_backoff_and_then_handled_once(
    kafka_bootstrap, namespace, lane_kind
):
    """Two transient failures, then success: handled once, one output, no dead letter, and the tries
    are spaced by the (jittered, doubling) backoff."""
    events = _publish_instructions(kafka_bootstrap, namespace, 4, partitions=2)
    tries: dict[str, list[float]] = {}
    lock = threading.Lock()

    def flaky(event: ev.Instruction) -> list[ev.Event]:
        with lock:
            times = tries.setdefault(event.instruction_id, [])
            times.append(time.monotonic())
            attempt = len(times)
        if attempt < 3:
            raise RetryableError(f"backend 503 on try {attempt}")
        return [factories.echo_response(event)]

    runtime = _runtime(kafka_bootstrap, namespace, flaky, lane_kind, retry_attempts=3, retry_backoff_s=0.3)
    with _running(runtime):
        wait_until(
            lambda: _committed(kafka_bootstrap, namespace, runtime.definition.group_id) == len(events),
            60,
            "every offset committed",
        )
    assert {key: len(times) for key, times in tries.items()} == {e.instruction_id: 3 for e in events}
    for times in tries.values():
        # backoff_s * 2**(n-1) * jitter in [0.5, 1.5): at least 0.15 s, then at least 0.3 s
        assert times[1] - times[0] >= 0.15 and times[2] - times[1] >= 0.3, times
    assert consume_all(kafka_bootstrap, namespace + INSTRUCTIONS.dlq) == []
    answers = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=len(events))
    assert sorted(r.key.decode() for r in answers) == sorted(e.instruction_id for e in events)


def test_a_retryable_failure_that_never_clears_is_dead_lettered_with_its_attempts(
    kafka_bootstrap, namespace, lane_kind
):
    events = _publish_instructions(kafka_bootstrap, namespace, 3, partitions=1)
    tries: Counter[str] = Counter()
    lock = threading.Lock()

    def down(event: ev.Instruction) -> list[ev.Event]:
        with lock:
            tries[event.instruction_id] += 1
        raise RetryableError("backend still down")

    runtime = _runtime(kafka_bootstrap, namespace, down, lane_kind, retry_attempts=4, retry_backoff_s=0.05)
    with _running(runtime):
        dead = consume_all(kafka_bootstrap, namespace + INSTRUCTIONS.dlq, expect=len(events), timeout_s=60)
        wait_until(
            lambda: _committed(kafka_bootstrap, namespace, runtime.definition.group_id) == len(events),
            30,
            "the dead-lettered offsets committed",
        )
    assert dict(tries) == {e.instruction_id: 4 for e in events}
    letters = [read_dlq_headers(r.headers) for r in dead]
    assert [letter["attempts"] for letter in letters] == ["4"] * len(events)
    assert {letter["error.class"] for letter in letters} == {"RetryableError"}
    assert sorted(r.value for r in dead) == sorted(encode(e) for e in events)
    assert consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name) == []


# --- graceful stop and crashes ------------------------------------------------------------------


def test_sigterm_gives_a_slow_handler_the_grace_period_and_its_message_comes_back(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path, lane_kind
):
    """The handler takes 40 s, the grace period is 2 s: the service exits cleanly soon after the
    grace period, without committing the unfinished message, which the next start handles."""
    [event] = _publish_instructions(kafka_bootstrap, namespace, 1, partitions=1)
    trace = tmp_path / "trace"
    env = _recorder_env(
        kafka_bootstrap,
        namespace,
        ledger_url,
        trace,
        VLF_SHUTDOWN_GRACE_S="2",
        **({"RECORDER_ASYNC": "1"} if lane_kind == "async-lanes" else {}),
    )
    slow = start_process(RECORDER, {**env, "RECORDER_DELAY_S": "40"}, tmp_path / "log")
    try:
        wait_until(lambda: len(_trace(trace)) == 1, 60, "the handler to start")
        signalled = time.monotonic()
        code = stop_process(slow, timeout_s=60)
        took_s = time.monotonic() - signalled
    finally:
        slow.kill()
    assert code == 0, (tmp_path / "log").read_text()
    assert took_s < 2 + 6, f"stopped {took_s:.1f}s after SIGTERM with a 2s grace period"
    assert ledger.count(ev.Instruction) == 0
    assert _committed(kafka_bootstrap, namespace, "vlf-recorder") == 0

    again = start_process(RECORDER, env, tmp_path / "log")
    try:
        wait_until(lambda: ledger.count(ev.Instruction) == 1, 60, "the abandoned message after the restart")
        wait_until(lambda: _committed(kafka_bootstrap, namespace, "vlf-recorder") == 1, 30, "its commit")
    finally:
        assert stop_process(again) == 0, (tmp_path / "log").read_text()
    assert [(what, key) for what, _, key in _trace(trace)] == [
        ("start", event.instruction_id),
        ("start", event.instruction_id),
        ("done", event.instruction_id),
    ]


def test_an_unclassified_error_stops_the_service_and_its_message_is_redelivered(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path
):
    events = _publish_instructions(kafka_bootstrap, namespace, 6, partitions=1)
    bad = events[2].instruction_id
    trace = tmp_path / "trace"
    env = _recorder_env(kafka_bootstrap, namespace, ledger_url, trace, VLF_MAX_IN_FLIGHT="1")
    broken = start_process(RECORDER, {**env, "RECORDER_CRASH_ON": bad}, tmp_path / "log")
    try:
        code = broken.wait(timeout=90)
    finally:
        broken.kill()
    log = (tmp_path / "log").read_text()
    assert code != 0, log
    assert "handler crashed" in log and f"the recorder's handler broke on {bad}" in log
    assert _committed(kafka_bootstrap, namespace, "vlf-recorder") <= 2, "the crashed message was committed"

    fixed = start_process(RECORDER, env, tmp_path / "log")
    try:
        wait_until(lambda: ledger.count(ev.Instruction) == len(events), 60, "every message after the restart")
        wait_until(
            lambda: _committed(kafka_bootstrap, namespace, "vlf-recorder") == len(events), 30, "commits"
        )
    finally:
        assert stop_process(fixed) == 0, (tmp_path / "log").read_text()
    starts = Counter(key for what, _, key in _trace(trace) if what == "start")
    assert starts[bad] == 2


# --- bounded buffer -----------------------------------------------------------------------------


def test_a_service_holds_no_more_than_max_buffered_unfinished_messages(kafka_bootstrap, namespace):
    """A backlog far larger than the buffer and a slow handler: the messages fetched but not finished
    (the runtime's consumed count minus its finished count, sampled while it runs) stay within
    VLF_MAX_BUFFERED, and the buffer does fill (or the test would prove nothing)."""
    max_buffered = 12
    _publish_instructions(kafka_bootstrap, namespace, 400, partitions=3)
    samples: list[float] = []
    runtime: KafkaRuntime

    def held() -> float:
        consumed = runtime.registry.get_sample_value(
            "vlf_messages_consumed_total",
            {"service": "guarantees", "topic": namespace + INSTRUCTIONS.name},
        )
        finished = runtime.registry.get_sample_value(
            "vlf_handler_seconds_count", {"service": "guarantees", "topic": namespace + INSTRUCTIONS.name}
        )
        return (consumed or 0) - (finished or 0)

    def slow(event: ev.Instruction) -> list[ev.Event]:
        samples.append(held())
        time.sleep(0.01)
        return []

    runtime = _runtime(kafka_bootstrap, namespace, slow, max_in_flight=2, max_buffered=max_buffered)
    with _running(runtime):
        wait_until(lambda: len(samples) >= 150, 120, "150 messages handled")
        for _ in range(200):
            samples.append(held())
            time.sleep(0.005)
    assert max(samples) <= max_buffered + 1, f"held up to {max(samples)} messages"
    assert max(samples) >= max_buffered // 2, f"the buffer never filled: at most {max(samples)}"


# --- commit after acks ---------------------------------------------------------------------------


def test_offsets_are_committed_only_after_the_outputs_are_acknowledged(kafka_bootstrap, namespace):
    """The broker cannot take the outputs yet (their topic does not exist and it creates none):
    handlers have returned, yet nothing is committed; once the topic exists, outputs are acked and
    offsets committed."""
    events = _publish_instructions(kafka_bootstrap, namespace, 4, partitions=1)
    handled: list[str] = []

    def echo(event: ev.Instruction) -> list[ev.Event]:
        handled.append(event.instruction_id)
        return [factories.echo_response(event)]

    runtime = _runtime(kafka_bootstrap, namespace, echo)
    runtime.ensure_topics = lambda: None  # the consumed topic exists; the produced one must not yet
    group = runtime.definition.group_id
    with _running(runtime):
        wait_until(lambda: len(handled) == len(events), 60, "every handler returned")
        time.sleep(4)  # twenty commit intervals
        assert _committed(kafka_bootstrap, namespace, group) == 0, "committed before the outputs were acked"
        gauge = {"service": "guarantees", "topic": namespace + INSTRUCTIONS.name, "partition": "0"}
        assert runtime.registry.get_sample_value("vlf_committed_offset", gauge) is None
        create_topics(kafka_bootstrap, [namespace + topics.RESPONSES.name], partitions=2)
        wait_until(lambda: _committed(kafka_bootstrap, namespace, group) == len(events), 90, "commits")
        assert runtime.registry.get_sample_value("vlf_committed_offset", gauge) == len(events)
    answers = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=len(events))
    assert {r.key.decode() for r in answers} == {e.instruction_id for e in events}
    assert handled == [e.instruction_id for e in events], "no message may be handled twice here"


# --- rebalance between live replicas ------------------------------------------------------------


def test_a_replica_joining_and_one_leaving_mid_stream_lose_and_redo_nothing(
    kafka_bootstrap, namespace, ledger_url, ledger, tmp_path
):
    """Replica A works through a backlog; B joins mid-stream (partitions move from A to B), then A
    stops (they move back to B). Before partitions move, their running messages finish and their
    offsets are committed, so every message is handled exactly once and the group ends committed to
    the end."""
    count = 600
    events = _publish_instructions(kafka_bootstrap, namespace, count, partitions=INSTRUCTIONS.partitions)
    trace = tmp_path / "trace"
    env = _recorder_env(
        kafka_bootstrap, namespace, ledger_url, trace, RECORDER_DELAY_S="0.1", VLF_MAX_IN_FLIGHT="2"
    )

    def done_by(pid: int) -> int:
        return sum(1 for what, p, _ in _trace(trace) if what == "done" and p == pid)

    a = start_process(RECORDER, env, tmp_path / "log-a")
    b: subprocess.Popen | None = None
    try:
        wait_until(lambda: ledger.count(ev.Instruction) >= 30, 60, "A under way")
        b = start_process(RECORDER, env, tmp_path / "log-b")
        wait_until(lambda: done_by(b.pid) >= 20, 60, "B to take partitions and work")
        assert ledger.count(ev.Instruction) < count, "A finished before B joined: nothing tested"
        assert stop_process(a) == 0, (tmp_path / "log-a").read_text()
        assert ledger.count(ev.Instruction) < count, "done before A left: nothing tested"
        wait_until(lambda: ledger.count(ev.Instruction) == count, 120, "every message")
        wait_until(lambda: _committed(kafka_bootstrap, namespace, "vlf-recorder") == count, 30, "commits")
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                stop_process(process)
    assert b.returncode == 0, (tmp_path / "log-b").read_text()
    done = Counter(key for what, _, key in _trace(trace) if what == "done")
    assert set(done) == {e.instruction_id for e in events}
    twice = sorted(key for key, n in done.items() if n > 1)
    assert not twice, f"handled more than once: {twice}"
    assert done_by(a.pid) > 0 and done_by(b.pid) > 0
    answers = consume_all(kafka_bootstrap, namespace + topics.RESPONSES.name, expect=count)
    assert len(answers) == count
