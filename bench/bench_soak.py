"""Steady load for N minutes (default 60): does each service's memory stay flat? (issue 10)

The text pipeline (samplers for 3 models, the annotator, the pair builder; one process each) gets
``--rate`` instructions per second from test-server models and judge; every 30 s the resident set
size (RSS, from /proc) of each service process is sampled. At the end each service's growth from its
first sample after warm-up to its last is printed, with "flat" when it stays under
max(20 MiB, 10%).

Run: ``python -m bench.bench_soak [--minutes 60] [--rate 2]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from bench.bench_runtime import local_broker
from bench.bench_scale import running_pipeline
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.runtime.admin import EventPublisher
from tests.chaos.driver import make_instructions

SAMPLE_EVERY_S = 30.0
FLAT_MIB = 20.0
FLAT_SHARE = 0.10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def is_flat(first: float, last: float) -> bool:
    return last - first < max(FLAT_MIB, FLAT_SHARE * first)


def main(
    minutes: float = typer.Option(60, help="Length of the steady load."),
    rate: float = typer.Option(2.0, help="Instructions per second."),
    bootstrap: str | None = typer.Option(None, help="Use this broker instead of starting one."),
) -> None:
    """Print an RSS table (MiB) per sample and each service's verdict."""
    total = int(minutes * 60 * rate)
    with (
        local_broker(bootstrap) as address,
        tempfile.TemporaryDirectory(prefix="vlf-soak-") as tmp,
        running_pipeline(address, Path(tmp), 1, 0.05, f"soak{time.time_ns()}.") as p,
    ):
        data = make_instructions(total, BlobStore(p.settings.blob_url), p.registry)
        names = sorted(p.fleet.services)
        samples: list[list[float]] = []
        print(f"{'t (s)':>6} {'done':>6} " + " ".join(f"{n:>12}" for n in names))
        started = time.monotonic()
        next_sample = started + SAMPLE_EVERY_S
        with EventPublisher(p.settings) as publisher:
            for n, inst in enumerate(data):
                publisher.publish([inst])
                time.sleep(max(0.0, started + (n + 1) / rate - time.monotonic()))
                if time.monotonic() >= next_sample:
                    crashed = p.fleet.crashed()
                    if crashed:
                        raise RuntimeError(f"services crashed: {crashed}")
                    row = [rss_mib(p.fleet.services[name].process.pid) for name in names]
                    samples.append(row)
                    done = p.ledger.count(ev.Annotation)
                    elapsed = time.monotonic() - started
                    print(f"{elapsed:>6.0f} {done:>6} " + " ".join(f"{v:>12.1f}" for v in row))
                    next_sample += SAMPLE_EVERY_S
        done = p.ledger.count(ev.Annotation)
    print(f"{total} instructions published at {rate}/s; {done} annotated when the load stopped")
    if len(samples) < 2:
        print("too short for a verdict: run for at least a minute")
        return
    first = samples[1] if len(samples) > 2 else samples[0]  # the first sample includes warm-up
    for i, name in enumerate(names):
        verdict = "flat" if is_flat(first[i], samples[-1][i]) else "GROWING"
        print(f"{name:>12}: {first[i]:7.1f} -> {samples[-1][i]:7.1f} MiB  {verdict}")


if __name__ == "__main__":
    typer.run(main)
