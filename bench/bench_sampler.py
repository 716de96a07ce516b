"""Sampler service throughput against an OpenAI-compatible server with a fixed latency.

The whole path: broker -> sampler runtime (lanes) -> HTTP backend -> ledger -> broker -> commit.
With latency L and concurrency C (the sampler's VLF_MAX_IN_FLIGHT and the model's concurrency)
the ideal is C / L answers per second; printed with the measured rate, the ratio and the sampler
process's CPU per answer (one Python process: when rate x CPU per answer nears 1 s/s it is
CPU-bound, and only less CPU per answer or more replicas help).

Run: ``python bench/bench_sampler.py [--latency 0.2] [--waves 8]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import kafka_local  # noqa: E402
from shared.contracts import events as ev  # noqa: E402
from shared.ledger import Ledger  # noqa: E402
from shared.runtime.admin import EventPublisher  # noqa: E402
from shared.settings import CommonSettings  # noqa: E402
from tests.integration.kafka_helpers import service_env, start_process, wait_until  # noqa: E402
from tests.integration.pipeline_helpers import write_registry  # noqa: E402


def run(
    concurrency: int, count: int, latency: float, bootstrap: str, tmp: Path, base_url: str
) -> tuple[float, float]:
    """Answers per second, and the sampler process's CPU milliseconds per answer (it is one Python
    process, so near 1000 / rate it is CPU-bound)."""
    ns = f"bench{concurrency}x{int(time.time())}."
    ledger_url = f"sqlite:///{tmp / f'ledger-{concurrency}.db'}"
    registry = write_registry(tmp / f"registry-{concurrency}.yaml", base_url, ["m1"], k=1)
    text = registry.read_text().replace("concurrency: 8", f"concurrency: {concurrency}")
    registry.write_text(text.replace("timeout_s: 5", "timeout_s: 30"))
    env = service_env(
        bootstrap,
        ns,
        ledger_url,
        VLF_HTTP_PORT="0",
        VLF_REGISTRY_PATH=str(registry),
        VLF_SAMPLER_MODEL_ID="m1",
        VLF_MAX_IN_FLIGHT=str(concurrency),
        VLF_MAX_BUFFERED=str(max(64, 4 * concurrency)),
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
    sampler = start_process("services.sampler", env, tmp / f"sampler-{concurrency}.log")
    try:
        with EventPublisher(settings) as publisher:
            publisher.publish(warmup)
            wait_until(lambda: ledger.count(ev.Response) == len(warmup), 120, "warm-up")
            cpu = psutil.Process(sampler.pid)
            started, cpu_started = time.monotonic(), sum(cpu.cpu_times()[:2])
            publisher.publish(batch)
            wait_until(lambda: ledger.count(ev.Response) == len(warmup) + count, 600, "all answers")
            elapsed, cpu_s = time.monotonic() - started, sum(cpu.cpu_times()[:2]) - cpu_started
    finally:
        sampler.terminate()
        sampler.wait(timeout=60)
    return count / elapsed, 1000 * cpu_s / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=8, help="Requests per run = waves x concurrency.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sampler-") as tmp_name:
        tmp = Path(tmp_name)
        broker = kafka_local.BrokerConfig(port=kafka_local.free_ports(2), data_dir=tmp / "kafka")
        bootstrap = kafka_local.start_broker(broker)
        port = kafka_local.free_ports()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.openai_test_server",
                "--port",
                str(port),
                "--latency",
                str(args.latency),
            ]
        )
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            time.sleep(3)
            print(f"sampler service, server latency {args.latency * 1000:.0f} ms")
            print(
                f"{'concurrency':>11} {'answers':>8} {'answers/s':>10} {'ideal':>8} {'ratio':>6} "
                f"{'sampler CPU ms/answer':>22}"
            )
            for concurrency in (1, 16, 64):
                count = max(20, args.waves * concurrency)
                rate, cpu_ms = run(concurrency, count, args.latency, bootstrap, tmp, base_url)
                ideal = concurrency / args.latency
                print(
                    f"{concurrency:>11} {count:>8} {rate:>10.1f} {ideal:>8.1f} {rate / ideal:>6.2f} "
                    f"{cpu_ms:>22.2f}"
                )
        finally:
            server.terminate()
            kafka_local.stop_broker(broker)


if __name__ == "__main__":
    main()
