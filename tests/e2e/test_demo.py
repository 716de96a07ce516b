"""`vlf demo --quick` end to end: the loop must make the tuned model measurably better.

The rise cannot happen if chosen and rejected were swapped, if images never reached the model (the
colour is only in the image), or if the judge's ratings were misread: each of those leaves the
tuned model at chance or below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from devkit.kafka_local import free_ports
from shared.contracts import events as ev
from shared.ledger import Ledger
from tests.conftest import REPO_ROOT


def test_quick_demo_learns_and_reports_every_stage(tmp_path):
    workdir = tmp_path / "demo"
    # The demo starts (and stops) its own broker: here on a free port with its data in tmp_path.
    env = {**os.environ, "VLF_KAFKA_PORT": str(free_ports(2)), "VLF_KAFKA_DATA_DIR": str(tmp_path / "kafka")}
    result = subprocess.run(
        [sys.executable, "-m", "vlf.cli", "demo", "--quick", "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.db'}")

    def metric(name: str, benchmark: str) -> float:
        [value] = [
            r.metrics["accuracy"]
            for r in ledger.iter_facts(ev.EvalResult, benchmark=benchmark)
            if r.model.name == name and r.status == "completed"
        ]
        return value

    base, tuned = metric("base", "greedy_accuracy"), metric("tuned", "greedy_accuracy")
    assert tuned >= base + 0.5, f"greedy accuracy base {base} -> tuned {tuned}"
    assert metric("tuned", "preference_accuracy") >= 0.9
    assert ledger.count(ev.Response) > 0 and ledger.count(ev.Annotation) > 0 and ledger.count(ev.Pair) > 0
    report = (workdir / "report.html").read_text()
    for section in ("Rating", "margin", "loss", "greedy"):
        assert re.search(section, report, re.IGNORECASE), f"report lacks {section}"
    assert f"{tuned:.3f}"[:4] in report or f"{tuned:.2f}" in report
    assert "tiny" in report.lower()
    assert str(workdir) in result.stdout.replace("\n", "")
