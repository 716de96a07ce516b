"""The Kafka runtime: consume, hand each message to its handler, publish, commit, dead-letter.

Contract (DESIGN.md "at-least-once, effectively once"):
- auto-commit is off; a message's offset is committed only after its handler returned (its ledger
  writes done) and every output event (or its DLQ record) was acknowledged by the broker;
- messages run on ``max_in_flight`` worker lanes; one key's messages run one at a time in arrival
  order (``LanePool``, or ``AsyncLanePool`` for coroutine handlers), so one instruction's events
  are handled in order, and offsets are committed in order per partition;
- ``RetryableError``: retried with exponential backoff and jitter, then dead-lettered;
  ``PermanentError``/``ContractError``: dead-lettered at once; anything else: the process stops
  loudly without committing that message, which is redelivered after the restart;
- a broker outage never dead-letters anything: publishing is retried until the broker is back;
- SIGTERM (``stop()``): running messages finish, done offsets are committed, clients close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.partitioner.default import DefaultPartitioner
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from shared.contracts.codec import decode, encode
from shared.contracts.events import Event
from shared.contracts.topics import TopicSpec, topic
from shared.errors import PermanentError, RetryableError
from shared.runtime.admin import ensure_topics
from shared.runtime.dlq import dead_letter
from shared.runtime.event_loop import LoopThread
from shared.runtime.intake import READ_AHEAD, Intake
from shared.runtime.lanes import AsyncLanePool, LanePool
from shared.runtime.metrics import RuntimeMetrics
from shared.runtime.offsets import OffsetTracker
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

Handler = Callable[[Event], list[Event]]
AsyncHandler = Callable[[Event], Awaitable[list[Event]]]
_Send = tuple[str, bytes | None, bytes | None, list]  # topic, key, value, headers

LAG_INTERVAL_S = 5.0
POLL_TIMEOUT_MS = 200
PUBLISH_TIMEOUT_S = 30.0
# How long the broker may hold a fetch that found no new data. One fetch at a time goes to each
# broker, so a partition resumed after backpressure waits behind it: at kafka-python's 500 ms,
# partitions that had run dry stalled the ones with a backlog for half a second at a time.
FETCH_MAX_WAIT_MS = 50
# After the grace period: how long lanes get to notice that their messages are abandoned.
ABANDONED_LANES_JOIN_S = 1.0


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service consumes (topic -> handler) and may produce; checked at start-up.

    Handlers are plain functions run on lane threads, or, when ``loop`` is given, coroutine
    functions run as tasks on that event loop (for handlers that mostly await other coroutines,
    such as the sampler's HTTP calls on the same loop)."""

    name: str
    group_id: str
    routes: dict[str, Handler] | dict[str, AsyncHandler]
    produces: tuple[TopicSpec, ...] = ()
    ready_checks: dict[str, Callable[[], None]] = field(default_factory=dict)
    loop: LoopThread | None = None

    def __post_init__(self) -> None:
        for name, handler in self.routes.items():
            topic(name)  # raises on an unknown topic name
            if inspect.iscoroutinefunction(handler) != (self.loop is not None):
                kind = "coroutine functions (a loop is given)" if self.loop else "plain functions (no loop)"
                raise TypeError(f"{self.name}: the handler for {name} must be one of the {kind}")
        models = [spec.model for spec in self.produces]
        if len(models) != len(set(models)):
            raise ValueError(f"{self.name}: two produced topics share an event model")


class _Abandoned(Exception):
    """The runtime is stopping; the message stays uncommitted and is redelivered."""


class KafkaRuntime:
    def __init__(
        self,
        definition: ServiceDefinition,
        settings: CommonSettings,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.definition = definition
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = RuntimeMetrics(self.registry)
        self._tracker = OffsetTracker()
        self._stopping = threading.Event()  # stop fetching; lanes finish what they were given
        self._abandon = threading.Event()  # grace period over (or a crash): leave the rest uncommitted
        self._fatal: BaseException | None = None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._lanes = (
            LanePool(definition.name, settings.max_in_flight, self._abandon)
            if definition.loop is None
            else AsyncLanePool(settings.max_in_flight, self._abandon, definition.loop)
        )
        self._intake = Intake(settings.max_buffered, self._tracker, self._lanes.put, self._count_consumed)
        self._republish: queue.Queue = queue.Queue()
        self._republish_thread = threading.Thread(target=self._republisher, name="republisher", daemon=True)
        self._last_tick = time.monotonic()
        self._produced_topic = {spec.model: spec for spec in definition.produces}
        self._ns = settings.topic_namespace

    # --- public ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; safe from signal handlers and other threads."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def crash(self, error: BaseException) -> None:
        """A background task of the service (a timer) hit a bug: stop loudly, as for a crashed
        handler (``run`` re-raises ``error``, so the process exits non-zero and is restarted)."""
        log.error("background task crashed; stopping", exc_info=error)
        self._fatal = self._fatal or error
        self._abandon.set()
        self._stopping.set()

    def run(self) -> None:
        """Consume until ``stop()``; re-raises the error that made a handler crash."""
        self.ensure_topics()
        client = self.settings.kafka_client_config()
        # kafka-python's own client metrics are off: they cost CPU on every send and fetch, and the
        # runtime exports what operators read (lag, throughput, latency) to Prometheus itself.
        self._producer = KafkaProducer(
            **client,
            acks="all",
            linger_ms=1,
            retries=5,
            max_block_ms=10_000,
            metrics_enabled=False,
        )
        self._consumer = KafkaConsumer(
            **client,
            metrics_enabled=False,
            group_id=self.definition.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=self.settings.session_timeout_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            client_id=f"{self.definition.group_id}",
        )
        self._consumer.subscribe(
            [self._ns + name for name in self.definition.routes], listener=_Rebalance(self)
        )
        if isinstance(self._lanes, AsyncLanePool):
            self._lanes.start(self.process_async)
        else:
            self._lanes.start(self.process)
        self._republish_thread.start()
        log.info(
            "runtime started",
            extra={"group": self.definition.group_id, "topics": list(self.definition.routes)},
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    def owns(self, topic_name: str, key: str) -> bool:
        """Whether this replica holds the partition that ``key`` maps to (for work started by a timer,
        so exactly one replica does it)."""
        if self._consumer is None:
            return False
        name = self._ns + topic_name
        # Cached metadata only: KafkaConsumer is not thread-safe, and this runs off the poll thread.
        partitions = sorted(self._consumer._client.cluster.partitions_for_topic(name) or [])
        if not partitions:
            return False
        partition = DefaultPartitioner()(key.encode(), partitions, partitions)
        return TopicPartition(name, partition) in self._assignment()

    def publish(self, events: list[Event]) -> None:
        """Publish events from outside a handler (e.g. a timer), waiting for the broker's acks."""
        self._publish(events)

    def alive(self) -> bool:
        """Liveness: the poll loop ticked recently (never checks Kafka or the database)."""
        return not self._stopping.is_set() and time.monotonic() - self._last_tick < 60

    def readiness(self) -> dict[str, str]:
        """Each check -> "ok" or the reason it failed."""
        checks: dict[str, str] = {"kafka": self._kafka_state()}
        for name, check in self.definition.ready_checks.items():
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # a readiness probe reports any failure, it never raises
                checks[name] = f"{type(exc).__name__}: {exc}"
        return checks

    def info(self) -> dict:
        return {
            "service": self.definition.name,
            "group_id": self.definition.group_id,
            "consumes": list(self.definition.routes),
            "produces": [spec.name for spec in self.definition.produces],
            "assignment": sorted(f"{tp.topic}:{tp.partition}" for tp in self._assignment()),
        }

    def ensure_topics(self) -> None:
        """Create every consumed and produced topic and its DLQ if missing."""
        ensure_topics(
            self.settings, {topic(name) for name in self.definition.routes} | set(self.definition.produces)
        )

    # --- poll loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._consumer is not None
        next_commit = next_lag = time.monotonic()
        while not self._stopping.is_set():
            self._last_tick = time.monotonic()
            self._intake.hand_out()
            self._intake.apply_backpressure(self._consumer)
            # With fetched messages waiting for a full buffer: sleep until lanes make room, then
            # poll(0), which still runs at least every POLL_TIMEOUT_MS (rebalances, poll interval).
            waited = self._intake.wait_for_room(POLL_TIMEOUT_MS / 1000)
            timeout_ms = 0 if waited else POLL_TIMEOUT_MS
            self._intake.add(self._consumer.poll(timeout_ms=timeout_ms, max_records=READ_AHEAD))
            held = self._tracker.in_flight() + self._intake.waiting()
            self.metrics.in_flight.labels(self.definition.name).set(held)
            now = time.monotonic()
            if now >= next_commit:
                self._commit()
                next_commit = now + self.settings.commit_interval_s
            if now >= next_lag:
                self._update_lag()
                next_lag = now + LAG_INTERVAL_S

    def _count_consumed(self, topic_name: str, count: int) -> None:
        self.metrics.consumed.labels(self.definition.name, topic_name).inc(count)

    def _commit(self) -> None:
        ready = self._tracker.take_committable()
        if not ready or self._consumer is None:
            return
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in ready.items()}
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance took the partition: its new owner redoes the work
            log.warning("commit failed, messages will be redelivered: %s", exc)
            return
        for (topic_name, partition), offset in ready.items():
            self.metrics.committed.labels(self.definition.name, topic_name, str(partition)).set(offset)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=1000)
            except KafkaError:
                continue
            if position is not None:
                self.metrics.lag.labels(self.definition.name, tp.topic, str(tp.partition)).set(
                    highwater - position
                )

    def _assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment() if self._consumer is not None else set()

    def _kafka_state(self) -> str:
        """Ready means connected. A member without partitions is ready too: a group with more
        members than partitions always has idle ones, and a rolling update's surge pod is one
        until the old pod leaves (/info shows the assignment)."""
        if self._consumer is None:
            return "not started"
        client = self._consumer._client  # kafka-python exposes connection state only on its client
        brokers = client.cluster.brokers()
        if not brokers or not any(client.connected(b.nodeId) for b in brokers):
            return "no broker connection"
        return "ok"

    def _drain(self, timeout_s: float) -> None:
        """Wait until every lane finished what it holds and its outputs are acknowledged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._lanes.idle():
            time.sleep(0.02)
        self._flush(deadline)
        while time.monotonic() < deadline and not self._republish.empty():
            time.sleep(0.02)

    def _flush(self, deadline: float) -> None:
        """Wait for outstanding acks (their callbacks finish offsets); a broker outage just ends the wait."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
        except KafkaError as exc:
            log.warning("flush incomplete (%s); unacknowledged messages will be redelivered", exc)

    def _shutdown(self) -> None:
        """Let lanes finish the messages they hold (so committed offsets have no gaps and nothing is
        redone), within the grace period; then abandon the rest, commit and close."""
        self._stopping.set()
        self._lanes.stop()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        self._lanes.join(timeout_s=max(0.0, deadline - time.monotonic()))
        self._flush(deadline)
        self._republish.put(None)
        if self._republish_thread.is_alive():
            self._republish_thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        # Lanes waiting out a backoff or a publish retry see the abandon at once. A handler still
        # running cannot be interrupted and is not waited for: its message stays uncommitted and is
        # redelivered; waiting for it would keep the service alive past its grace period.
        self._lanes.join(timeout_s=ABANDONED_LANES_JOIN_S)
        self._commit()
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        if self._producer is not None:
            self._producer.close(timeout=10)
        log.info("runtime stopped", extra={"group": self.definition.group_id})

    # --- per message (worker threads) -----------------------------------------------------------

    def process(self, record) -> None:  # noqa: ANN001 - kafka-python ConsumerRecord
        """Handle one record to completion: outputs acknowledged, or dead-lettered, or abandoned."""
        spec, handler = self._route(record)
        started = time.monotonic()
        with self._log_context(record):
            sends: list[_Send] = []
            attempts = 0
            try:
                while True:
                    attempts += 1
                    try:
                        sends = self._sends_for(handler(decode(spec, record.value)))
                        break
                    except (RetryableError, PermanentError) as exc:
                        delay_s = self._retry_delay_s(record, exc, attempts)
                        if delay_s is None:
                            self._dead_letter(record, exc, attempts)
                            break
                        if self._abandon.wait(delay_s):
                            raise _Abandoned() from exc
            except _Abandoned:
                return
            except BaseException as exc:
                self._crashed(record, exc)
                return
            self._publish_then_finish(record, sends, started)

    async def process_async(self, record) -> None:  # noqa: ANN001 - kafka-python ConsumerRecord
        """``process`` for coroutine handlers, on the service's loop. Dead-lettering, which waits for
        the broker, runs in a worker thread so the loop's other messages go on meanwhile."""
        spec, handler = self._route(record)
        started = time.monotonic()
        with self._log_context(record):
            sends: list[_Send] = []
            attempts = 0
            try:
                while True:
                    attempts += 1
                    try:
                        sends = self._sends_for(await handler(decode(spec, record.value)))
                        break
                    except (RetryableError, PermanentError) as exc:
                        delay_s = self._retry_delay_s(record, exc, attempts)
                        if delay_s is None:
                            await asyncio.to_thread(self._dead_letter, record, exc, attempts)
                            break
                        await self._sleep_unless_abandoned(delay_s)
            except (_Abandoned, asyncio.CancelledError):  # the loop is ending: left uncommitted
                return
            except BaseException as exc:
                self._crashed(record, exc)
                return
            self._publish_then_finish(record, sends, started)

    def _route(self, record) -> tuple[TopicSpec, Handler | AsyncHandler]:  # noqa: ANN001
        name = record.topic.removeprefix(self._ns)
        return topic(name), self.definition.routes[name]

    def _log_context(self, record):  # noqa: ANN001, ANN202 - a context manager
        key = (record.key or b"").decode(errors="replace")
        return structlog.contextvars.bound_contextvars(key=key, topic=record.topic, offset=record.offset)

    def _retry_delay_s(
        self,
        record,  # noqa: ANN001
        error: RetryableError | PermanentError,
        attempts: int,
    ) -> float | None:
        """Count the failure; the backoff (exponential, with jitter) before the next attempt, or None
        when the message is to be dead-lettered now (a permanent error, or its retries are spent)."""
        self._count_failure(record.topic, error)
        if isinstance(error, PermanentError) or attempts >= self.settings.retry_attempts:
            return None
        return self.settings.retry_backoff_s * 2 ** (attempts - 1) * (0.5 + random.random())

    async def _sleep_unless_abandoned(self, delay_s: float) -> None:
        """Sleep, in steps short enough to notice that the runtime gave up on unfinished messages."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            if self._abandon.is_set():
                raise _Abandoned()
            await asyncio.sleep(min(left, 0.2))
        if self._abandon.is_set():
            raise _Abandoned()

    def _crashed(self, record, error: BaseException) -> None:  # noqa: ANN001
        """A handler raised something that is neither retryable nor permanent: stop the service loudly,
        leaving the message uncommitted (it is redelivered after the restart)."""
        log.error(
            "handler crashed on %s[%s]@%s; stopping",
            record.topic,
            record.partition,
            record.offset,
            exc_info=error,
        )
        self._count_failure(record.topic, error)
        self._fatal = self._fatal or error
        self._abandon.set()
        self._stopping.set()

    def _finish(self, record, started: float, sends: list[_Send]) -> None:  # noqa: ANN001
        """The message is done (outputs acknowledged): its offset may now be committed."""
        for name, *_ in sends:
            self.metrics.produced.labels(self.definition.name, name).inc()
        self.metrics.handler_seconds.labels(self.definition.name, record.topic).observe(
            time.monotonic() - started
        )
        self._intake.finished(self._tracker.finished((record.topic, record.partition), record.offset))

    def _publish_then_finish(self, record, sends: list[_Send], started: float) -> None:  # noqa: ANN001
        """Send without waiting: the lane moves on, and the offset is finished from the producer's ack
        callbacks (at once when there is nothing to send). A failed send goes to the republisher,
        which retries until the broker takes it."""
        assert self._producer is not None
        if not sends:
            self._finish(record, started, [])
            return
        state = {"remaining": len(sends), "failed": False}
        lock = threading.Lock()

        def acked(_metadata: object) -> None:
            with lock:
                state["remaining"] -= 1
                done = state["remaining"] == 0 and not state["failed"]
            if done:
                self._finish(record, started, sends)

        def failed(exc: BaseException) -> None:
            with lock:
                if state["failed"]:
                    return
                state["failed"] = True
            log.warning("publish failed (%s); handing over to the republisher", exc)
            self._republish.put((record, sends, started))

        for name, key, value, headers in sends:
            try:
                future = self._producer.send(name, key=key, value=value, headers=headers)
            except KafkaError as exc:
                failed(exc)
                return
            future.add_callback(acked)
            future.add_errback(failed)

    def _republisher(self) -> None:
        """Re-send outputs whose first send failed, waiting for acks, until they go through or we stop."""
        while True:
            item = self._republish.get()
            if item is None:
                return
            record, sends, started = item
            try:
                self._send_acknowledged(sends)
            except _Abandoned:
                continue  # not finished: the message is redelivered after the restart
            self._finish(record, started, sends)

    def _count_failure(self, topic_name: str, exc: BaseException) -> None:
        self.metrics.failed.labels(self.definition.name, topic_name, type(exc).__name__).inc()

    def _publish(self, outputs: list[Event]) -> None:
        sends = self._sends_for(outputs)
        self._send_acknowledged(sends)
        for name, *_ in sends:
            self.metrics.produced.labels(self.definition.name, name).inc()

    def _sends_for(self, outputs: list[Event]) -> list[_Send]:
        sends: list[_Send] = []
        for event in outputs:
            spec = self._produced_topic.get(type(event))
            if spec is None:
                raise TypeError(f"{self.definition.name} does not declare a topic for {type(event).__name__}")
            sends.append((self._ns + spec.name, spec.key(event).encode(), encode(event), []))
        return sends

    def _dead_letter(self, record, error: BaseException, attempts: int) -> None:  # noqa: ANN001
        letter = dead_letter(record, service=self.definition.group_id, error=error, attempts=attempts)
        log.warning("dead-lettered %s[%s]@%s: %s", record.topic, record.partition, record.offset, error)
        dlq = self._ns + topic(record.topic.removeprefix(self._ns)).dlq
        self._send_acknowledged([(dlq, letter.key, letter.value, letter.headers)])
        self.metrics.dead_lettered.labels(self.definition.name, record.topic).inc()

    def _send_acknowledged(self, sends: list[_Send]) -> None:
        """Send and wait for the broker's acks; while the broker is away, keep trying until stopped."""
        assert self._producer is not None
        backoff = 0.5
        while True:
            try:
                futures = [self._producer.send(t, key=k, value=v, headers=h) for t, k, v, h in sends]
                for future in futures:
                    future.get(timeout=PUBLISH_TIMEOUT_S)
                return
            except KafkaError as exc:
                log.warning("publish failed (%s); retrying in %.1fs", exc, backoff)
                if self._abandon.wait(backoff):
                    raise _Abandoned() from exc
                backoff = min(backoff * 2, 10.0)


class _Rebalance(ConsumerRebalanceListener):
    """Before partitions move: finish their running messages and commit, so the next owner starts clean."""

    def __init__(self, runtime: KafkaRuntime) -> None:
        self._runtime = runtime

    def on_partitions_revoked(self, revoked) -> None:  # noqa: ANN001
        if not self._runtime._stopping.is_set():
            self._runtime._drain(timeout_s=self._runtime.settings.max_poll_interval_ms / 2000)
        self._runtime._commit()
        self._runtime._tracker.forget([(tp.topic, tp.partition) for tp in revoked])
        self._runtime._intake.drop(revoked)
        for tp in revoked:
            self._runtime.metrics.forget_partition(self._runtime.definition.name, tp.topic, tp.partition)

    def on_partitions_assigned(self, assigned) -> None:  # noqa: ANN001
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
