"""Whole text pipeline throughput at 1, 2 and 4 replicas of each sampler and of the annotator
(issue 10): samplers (3 models, k=2) -> annotator -> pair builder over the 6-partition topics, with
OpenAI-compatible test servers at a fixed latency as models and judge.

Each step starts a fresh set of processes on its own topics, warms them up with one instruction,
lets the groups settle, then times N instructions from publish to the last annotation and pair.
Efficiency = (throughput at r replicas) / (r x throughput at 1 replica). On a small machine the
processes compete for the same cores, which the efficiency shows.

Run: ``python -m bench.bench_scale [--instructions 200] [--replicas 1 --replicas 2 --replicas 4]``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import typer

from bench.bench_runtime import local_broker
from devkit.openai_test_server import TestServerConfig, serve_in_thread
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.registry import Registry
from shared.runtime.admin import EventPublisher
from shared.settings import CommonSettings
from tests.chaos.driver import (
    JUDGE_ID,
    MODEL_IDS,
    Fleet,
    Service,
    make_instructions,
    pipeline_store,
    write_registry,
)
from tests.integration.judge_responder import judge_responder
from tests.integration.kafka_helpers import service_env, wait_until


@dataclass
class RunningPipeline:
    settings: CommonSettings
    ledger: Ledger
    fleet: Fleet
    registry: Registry


def replica_fleet(settings: CommonSettings, env: dict[str, str], log_dir: Path, replicas: int) -> Fleet:
    """``replicas`` processes of each sampler and of the annotator (same group each), one pair builder."""
    ns = settings.topic_namespace
    fleet = Fleet(log_dir)
    for r in range(replicas):
        for model in MODEL_IDS:
            fleet.add(
                Service(f"{model}-{r}", "services.sampler", {**env, "VLF_SAMPLER_MODEL_ID": model},
                        topics.sampler_group(model), [ns + topics.INSTRUCTIONS.name])
            )  # fmt: skip
        fleet.add(
            Service(f"annotator-{r}", "services.annotator", {**env, "VLF_ANNOTATOR_JUDGE_ID": JUDGE_ID},
                    topics.annotator_group(JUDGE_ID), [ns + topics.RESPONSES.name])
        )  # fmt: skip
    fleet.add(
        Service(
            "pair-builder",
            "services.pair_builder",
            env,
            topics.PAIR_BUILDER_GROUP,
            [ns + topics.ANNOTATIONS.name],
        )
    )
    return fleet


@contextlib.contextmanager
def running_pipeline(
    bootstrap: str, work: Path, replicas: int, latency_s: float, namespace: str
) -> Iterator[RunningPipeline]:
    """Test servers, registry, ledger and the service processes; everything stopped afterwards."""
    models = serve_in_thread(TestServerConfig(latency_s=latency_s))
    judge = serve_in_thread(TestServerConfig(latency_s=latency_s, responder=judge_responder))
    fleet: Fleet | None = None
    try:
        registry_path = write_registry(work / "registry.yaml", models.base_url, judge.base_url, timeout_s=30)
        settings, ledger = pipeline_store(bootstrap, namespace, work, registry_path)
        env = service_env(
            bootstrap,
            namespace,
            settings.ledger_url,
            VLF_HTTP_PORT="0",
            VLF_BLOB_URL=settings.blob_url,
            VLF_REGISTRY_PATH=str(registry_path),
            VLF_LOG_LEVEL="WARNING",
        )
        (work / "logs").mkdir(exist_ok=True)
        fleet = replica_fleet(settings, env, work / "logs", replicas)
        for name in fleet.services:
            fleet.start(name)
        yield RunningPipeline(settings, ledger, fleet, Registry.load(registry_path))
    finally:
        if fleet is not None:
            fleet.stop_all(timeout_s=30)
        models.stop()
        judge.stop()


def measure(bootstrap: str, replicas: int, count: int, latency_s: float, settle_s: float) -> float:
    """Instructions per second, publish to the last annotation and pair."""
    with tempfile.TemporaryDirectory(prefix="vlf-scale-") as tmp:
        work = Path(tmp)
        with running_pipeline(
            bootstrap, work, replicas, latency_s, f"scale{replicas}x{time.time_ns()}."
        ) as p:
            data = make_instructions(count + 1, BlobStore(p.settings.blob_url), p.registry)
            warmup, batch = data[:1], data[1:]
            with EventPublisher(p.settings) as publisher:
                publisher.publish(warmup)
                wait_until(lambda: p.ledger.count(ev.Annotation) == 1, 300, "the warm-up annotation")
                time.sleep(settle_s)  # later replicas finish joining their groups
                started = time.monotonic()
                publisher.publish(batch)
                wait_until(lambda: p.ledger.count(ev.Annotation) == count + 1, 1800, f"{count} annotations")
            elapsed = time.monotonic() - started
            crashed = p.fleet.crashed()
            if crashed:
                raise RuntimeError(f"services crashed: {crashed}")
    return count / elapsed


def main(
    instructions: int = typer.Option(200, help="Timed instructions per step."),
    replicas: list[int] = typer.Option([1, 2, 4], help="Replica counts to measure."),
    latency: float = typer.Option(0.2, help="Model and judge latency, seconds."),
    settle: float = typer.Option(15.0, help="Seconds between warm-up and the timed batch."),
    bootstrap: str | None = typer.Option(None, help="Use this broker instead of starting one."),
) -> None:
    """Print instructions/s and per-replica efficiency for each replica count."""
    with local_broker(bootstrap) as address:
        rates = {r: measure(address, r, instructions, latency, settle) for r in replicas}
    base = rates[replicas[0]] / replicas[0]
    print(f"{instructions} instructions, latency {latency}s, 3 models k=2, 6 partitions")
    print(f"{'replicas':>8} {'processes':>9} {'inst/s':>8} {'efficiency':>10}")
    for r, rate in rates.items():
        print(f"{r:>8} {4 * r + 1:>9} {rate:>8.2f} {rate / (r * base):>10.2f}")


if __name__ == "__main__":
    typer.run(main)
