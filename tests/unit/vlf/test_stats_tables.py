"""`vlf stats` prints tables a person reads: the figures of ``--json``, laid out by model, aspect,
pair count and judge pair."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shared.ledger import Ledger
from tests import factories
from vlf.cli import app


def test_stats_tables_hold_the_json_figures(tmp_path):
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    ledger.migrate()
    one, two = factories.instruction(1), factories.instruction(2)
    ledger.record(
        factories.annotation(one, {"good": (5, 4, 5), "bad": (1, 2, 5)}),
        factories.annotation(two, {"good": (4, 4, 5), "bad": (2, 1, None)}),
        factories.annotation(one, {"good": (4, 4, 4), "bad": (2, 2, 2)}, judge_id="other"),
    )
    ledger.close()
    env = {"VLF_LEDGER_URL": ledger_url, "VLF_BLOB_URL": str(tmp_path / "blobs"), "COLUMNS": "200"}

    tables = CliRunner().invoke(app, ["stats"], env=env)
    figures = json.loads(CliRunner().invoke(app, ["stats", "--json"], env=env).output)

    assert tables.exit_code == 0, tables.output
    rows = {line.split("│")[1].strip(): line for line in tables.output.splitlines() if line.count("│") > 2}
    good = {m["model_id"]: m for m in figures["models"]}["good"]
    assert f"{good['aspects']['Helpfulness']['mean']:.2f}" in rows["good"]
    assert "(1 unrated)" in rows["bad"], "an answer without a number for an aspect is counted"
    assert rows["pairs"].split("│")[2].strip() == str(figures["pairs"]["pairs"])
    assert "judge / other" in rows
    assert "{" not in tables.output, "no raw dict"
