"""Throughput of OpenAIHttpBackend against the test server at a fixed latency.

The server runs in its own process, so the figures measure the client's CPU honestly. With a
fixed server latency L and concurrency C the ideal is C / L requests per second; the goal is at
least 0.9 of it at C = 64.

"bare ratio" is the same load from a bare aiohttp client, measured right after: the floor that
the machine allows at that moment (it shows when other processes compete for the CPUs).

Run: ``python -m bench.bench_http_backend`` (options: ``--latency``, ``--runs``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import typer
import uvloop

from devkit.kafka_local import free_ports
from shared.backends.base import ChatMessage, GenerationRequest
from shared.backends.openai_http import OpenAIHttpBackend, build_completion_kwargs
from shared.contracts.events import SamplingParams

MODEL = "bench-model"
# (concurrency, number of requests): ten full waves of the concurrency (twenty at 1).
RUNS = ((1, 20), (16, 200), (64, 640))


@contextmanager
def server_process(latency_s: float, model: str = MODEL) -> Iterator[str]:
    """The test server in a child process; yields its base URL once ``/v1/models`` answers."""
    port = free_ports()
    command = [sys.executable, "-m", "devkit.openai_test_server", "--port", str(port)]
    command += ["--latency", str(latency_s), "--model", model]
    process = subprocess.Popen(command)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/models", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the test server did not start") from None
                time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench_requests(count: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            messages=[ChatMessage(role="user", text=f"Describe request {index} in a few words.")],
            params=SamplingParams(max_tokens=32),
        )
        for index in range(count)
    ]


def measure(base_url: str, concurrency: int, count: int) -> tuple[float, float]:
    """Requests per second and client CPU ms per request for one batch, after a warm-up wave."""
    backend = OpenAIHttpBackend(MODEL, base_url, None, concurrency=concurrency)
    try:
        backend.generate(bench_requests(concurrency))
        requests = bench_requests(count)
        started, cpu_started = time.perf_counter(), time.process_time()
        results = backend.generate(requests)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        backend.close()
    assert len(results) == count
    return count / elapsed, 1000 * cpu_s / count


def measure_plain_aiohttp(base_url: str, concurrency: int, count: int) -> float:
    """Requests per second of a bare aiohttp client on uvloop: the floor this machine allows right
    now, so a low ratio can be told apart from a busy machine."""

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            slots = asyncio.Semaphore(concurrency)

            async def one(request: GenerationRequest) -> None:
                payload = build_completion_kwargs(MODEL, request)
                async with slots, session.post(f"{base_url}/chat/completions", json=payload) as response:
                    response.raise_for_status()
                    await response.json()

            await asyncio.gather(*(one(r) for r in bench_requests(concurrency)))
            started = time.perf_counter()
            await asyncio.gather(*(one(r) for r in bench_requests(count)))
            return count / (time.perf_counter() - started)

    return uvloop.run(run())


def main(latency: float = typer.Option(0.2, help="Server latency per call, seconds.")) -> None:
    """Print throughput, the ideal, their ratio and the client's CPU ms per request for each
    concurrency, with a bare aiohttp client's ratio measured alongside."""
    with server_process(latency) as base_url:
        print(f"server latency {latency:.3f} s; client and server in separate processes")
        print(
            f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6} "
            f"{'cpu ms/req':>10} {'bare ratio':>10}"
        )
        for concurrency, count in RUNS:
            throughput, cpu_ms = measure(base_url, concurrency, count)
            ideal = concurrency / latency
            bare_ratio = measure_plain_aiohttp(base_url, concurrency, count) / ideal
            print(
                f"{concurrency:>11} {count:>8} {throughput:>8.1f} {ideal:>8.1f} {throughput / ideal:>6.3f} "
                f"{cpu_ms:>10.2f} {bare_ratio:>10.3f}"
            )
        print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    typer.run(main)
