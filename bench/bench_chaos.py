"""The chaos run at scale (not run in CI): >= 2,000 instructions through samplers (3 models, k=2),
the annotator and the pair builder while services are SIGKILLed and the broker restarts once;
the same driver and end-state checker as ``tests/chaos/test_chaos.py``.

Run: ``python -m bench.bench_chaos [--instructions 2000] [--kills 40]``; exits 1 on any problem.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer

from devkit.kafka_local import free_ports
from tests.chaos.driver import ChaosPlan, run_chaos


def main(
    instructions: int = typer.Option(2000, help="Instructions submitted."),
    kills: int = typer.Option(40, help="SIGKILLs at least."),
    timeout: float = typer.Option(3600, help="Seconds before the run counts as stuck."),
    stall_bound: float = typer.Option(60, help="Seconds a lagging group may go without committing."),
) -> None:
    """Print progress, the end-state counts and every problem found."""
    plan = ChaosPlan(instructions=instructions, batches=max(12, instructions // 50), min_kills=kills)
    work = Path(tempfile.mkdtemp(prefix="vlf-chaos-"))
    print(f"work dir (service logs, ledger; removed after a clean run): {work}")
    report = run_chaos(
        plan, work, free_ports(2), stall_bound_s=stall_bound, timeout_s=timeout, progress=print
    )
    print(
        f"finished in {report.seconds:.0f}s; kills {len(report.kills)}; "
        f"broker restarts {report.broker_restarts}"
    )
    print(f"counts: {report.end_state.counts}")
    for line in report.service_failures + report.end_state.problems:
        print(f"PROBLEM: {line}")
    if report.service_failures or report.end_state.problems:
        raise typer.Exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{instructions / report.seconds:.2f} instructions/s end to end under chaos")


if __name__ == "__main__":
    typer.run(main)
