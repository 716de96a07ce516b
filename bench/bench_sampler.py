"""Sampler service throughput against an OpenAI-compatible server with a fixed latency.

The whole path: broker -> sampler runtime (lanes) -> HTTP backend -> ledger -> broker -> commit.
With latency L and concurrency C (the sampler's VLF_MAX_IN_FLIGHT and the model's concurrency)
the ideal is C / L answers per second; printed with the measured rate, the ratio and the sampler
process's CPU per answer (one Python process: when rate x CPU per answer nears 1 s/s it is
CPU-bound, and only less CPU per answer or more replicas help).

``--runs 64x2`` splits the concurrency of 64 over two sampler processes in one consumer group (how
a deployment scales a model past one core: more replicas, one partition each at most).

Run: ``python bench/bench_sampler.py [--latency 0.2] [--waves 40] [--runs 1x1,16x1,64x1,64x2]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
from kafka import KafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_http_backend import server_process  # noqa: E402
from shared import kafka_local  # noqa: E402
from shared.contracts import events as ev  # noqa: E402
from shared.ledger import Ledger  # noqa: E402
from shared.runtime.admin import EventPublisher  # noqa: E402
from shared.settings import CommonSettings  # noqa: E402
from tests.integration.kafka_helpers import service_env, start_process, wait_until  # noqa: E402
from tests.integration.pipeline_helpers import write_registry  # noqa: E402


def group_members(bootstrap: str, group: str) -> int:
    """Members of a consumer group once it is stable (every replica has its partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (description,) = admin.describe_consumer_groups([group])
        return len(description.members) if description.state == "Stable" else 0
    finally:
        admin.close()


def run(
    concurrency: int, replicas: int, count: int, bootstrap: str, tmp: Path, base_url: str
) -> tuple[float, float]:
    """Answers per second, and the sampler processes' CPU milliseconds per answer (each is one
    Python process, so near replicas x 1000 / rate they are CPU-bound). ``replicas`` processes
    share the consumer group and the concurrency."""
    ns = f"bench{concurrency}x{replicas}x{int(time.time())}."
    per_replica = max(1, concurrency // replicas)
    ledger_url = f"sqlite:///{tmp / f'ledger-{concurrency}x{replicas}.db'}"
    registry = write_registry(tmp / f"registry-{concurrency}x{replicas}.yaml", base_url, ["m1"], k=1)
    text = registry.read_text().replace("concurrency: 8", f"concurrency: {per_replica}")
    registry.write_text(text.replace("timeout_s: 5", "timeout_s: 30"))
    env = service_env(
        bootstrap,
        ns,
        ledger_url,
        VLF_HTTP_PORT="0",
        VLF_REGISTRY_PATH=str(registry),
        VLF_SAMPLER_MODEL_ID="m1",
        VLF_MAX_IN_FLIGHT=str(per_replica),
        VLF_MAX_BUFFERED=str(max(64, 4 * per_replica)),
        VLF_BLOB_URL=str(tmp),
    )
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_namespace=ns, ledger_url=ledger_url)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    warmup = [
        ev.Instruction(instruction_id=f"warm-{i:06d}", prompt=f"warm {i}", models=["m1"]) for i in range(4)
    ]
    batch = [
        ev.Instruction(instruction_id=f"inst-{i:06d}", prompt=f"Describe {i}.", models=["m1"])
        for i in range(count)
    ]
    samplers = [
        start_process("services.sampler", env, tmp / f"sampler-{concurrency}-{replicas}-{i}.log")
        for i in range(replicas)
    ]

    def cpu_seconds() -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in samplers)

    try:
        with EventPublisher(settings) as publisher:
            publisher.publish(warmup)
            wait_until(lambda: ledger.count(ev.Response) == len(warmup), 120, "warm-up")
            wait_until(lambda: group_members(bootstrap, "vlf-sampler.m1") == replicas, 60, "replicas")
            started, cpu_started = time.monotonic(), cpu_seconds()
            publisher.publish(batch)
            wait_until(lambda: ledger.count(ev.Response) == len(warmup) + count, 600, "all answers")
            elapsed, cpu_s = time.monotonic() - started, cpu_seconds() - cpu_started
    finally:
        for sampler in samplers:
            sampler.terminate()
        for sampler in samplers:
            sampler.wait(timeout=60)
    return count / elapsed, 1000 * cpu_s / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=40, help="Requests per run = waves x concurrency.")
    parser.add_argument(
        "--runs",
        default="1x1,16x1,64x1,64x2",
        help="Comma-separated CONCURRENCYxREPLICAS: total concurrency, split over that many processes.",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sampler-") as tmp_name:
        tmp = Path(tmp_name)
        broker = kafka_local.BrokerConfig(port=kafka_local.free_ports(2), data_dir=tmp / "kafka")
        bootstrap = kafka_local.start_broker(broker)
        try:
            with server_process(args.latency, model="test-model") as base_url:
                print(f"sampler service, server latency {args.latency * 1000:.0f} ms")
                print(
                    f"{'concurrency':>11} {'replicas':>8} {'answers':>8} {'answers/s':>10} {'ideal':>8} "
                    f"{'ratio':>6} {'sampler CPU ms/answer':>22}"
                )
                for spec in args.runs.split(","):
                    concurrency, replicas = (int(part) for part in spec.split("x"))
                    count = max(20, args.waves * concurrency)
                    rate, cpu_ms = run(concurrency, replicas, count, bootstrap, tmp, base_url)
                    ideal = concurrency / args.latency
                    print(
                        f"{concurrency:>11} {replicas:>8} {count:>8} {rate:>10.1f} {ideal:>8.1f} "
                        f"{rate / ideal:>6.2f} {cpu_ms:>22.2f}"
                    )
        finally:
            kafka_local.stop_broker(broker)


if __name__ == "__main__":
    main()
