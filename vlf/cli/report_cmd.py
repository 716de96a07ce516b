"""``vlf report``: the pipeline's state and results as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import KafkaError

from shared.ledger import Ledger
from shared.settings import CommonSettings
from vlf.cli.output import console, fail

app = typer.Typer(help="Write the pipeline report (one HTML file, no external assets).")


@app.callback(invoke_without_command=True)
def report(
    out: Annotated[Path, typer.Option(help="Where to write the HTML file.")] = Path(".vlf/report.html"),
    kafka: Annotated[
        bool,
        typer.Option(
            help="Also read DLQ sizes and full training curves from Kafka; --no-kafka: the ledger alone."
        ),
    ] = True,
    demo_note: Annotated[
        bool, typer.Option("--demo-note", help="Say in a banner that the models are tiny random demo models.")
    ] = False,
) -> None:
    """Counts, rating distributions, judge bias, pair margins, training curves, base vs tuned."""
    from vlf.report.data import gather_report, read_train_progress
    from vlf.report.render import write_report
    from vlf.status import kafka_numbers

    settings = CommonSettings()
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    progress, dlq_sizes = None, None
    if kafka:
        try:
            progress = read_train_progress(settings)
            dlq_sizes, _lag = kafka_numbers(settings)
        except KafkaError as exc:
            fail(
                f"cannot read Kafka at {settings.kafka_bootstrap_servers}: {exc}",
                "start it with `vlf kafka up`, or report from the ledger alone with --no-kafka",
            )
    data = gather_report(ledger, progress=progress, dlq_sizes=dlq_sizes, demo_note=demo_note)
    ledger.close()
    console.print(f"report written to {write_report(data, out)}")
