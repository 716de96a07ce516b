"""The whole text pipeline under SIGKILLs, a broker restart, a misbehaving model and judge, and poison:
the end state in the ledger and on every topic is exactly what the pipeline promises."""

from __future__ import annotations

import os

from devkit.kafka_local import free_ports
from tests.chaos.driver import ChaosPlan, run_chaos


def test_pipeline_survives_kills_broker_restart_and_poison(tmp_path):
    plan = ChaosPlan(instructions=int(os.environ.get("VLF_CHAOS_INSTRUCTIONS", "120")), min_kills=12)
    report = run_chaos(plan, tmp_path, free_ports(2), stall_bound_s=60, timeout_s=330, progress=print)
    print(
        f"chaos: {report.seconds:.0f}s, {report.end_state.counts}, kills {[k.service for k in report.kills]}"
    )
    assert len(report.kills) >= 10 and {k.service for k in report.kills} >= {"annotator", "pair-builder"}
    assert report.broker_restarts == 1
    assert report.end_state.counts["pairs"] >= plan.instructions // 3, "too few pairs to mean anything"
    assert not report.service_failures, report.service_failures
    assert not report.end_state.problems, "\n".join(report.end_state.problems[:40])
