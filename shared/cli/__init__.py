"""The ``vlf`` command line: one command per pipeline stage. Errors are one line plus a hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shared import kafka_local
from shared.blobs.images import ImagePolicy
from shared.blobs.store import BlobStore
from shared.errors import VlfError
from shared.ledger import Ledger
from shared.registry import Registry
from shared.settings import CommonSettings

app = typer.Typer(
    help="VLFeedback pipeline: sample, judge, pair, train and evaluate LVLMs over Kafka.",
    no_args_is_help=True,
)
kafka_app = typer.Typer(help="The local single-node Kafka broker.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
console = Console()
err = Console(stderr=True)


def fail(message: str, hint: str) -> None:
    err.print(f"[bold red]error:[/] {message}\n[dim]hint: {hint}[/]")
    raise typer.Exit(2)


@kafka_app.command("up")
def kafka_up() -> None:
    """Fetch (once), format (once) and start the local broker; wait until it accepts clients."""
    cfg = kafka_local.BrokerConfig()
    try:
        bootstrap = kafka_local.start_broker(cfg)
    except kafka_local.BrokerError as exc:
        fail(str(exc), "is Java 17 on PATH and the port free? `vlf kafka down` stops an old broker")
    console.print(f"kafka broker ready on {bootstrap} (data in {cfg.data_dir})")


@kafka_app.command("down")
def kafka_down() -> None:
    """Stop the local broker (its data stays, so a restart keeps topics and offsets)."""
    kafka_local.stop_broker(kafka_local.BrokerConfig())
    console.print("kafka broker stopped")


@app.command()
def submit(
    source: Annotated[Path, typer.Argument(help="A JSONL file of records, or a folder of images.")],
    prompt: Annotated[str | None, typer.Option(help="Prompt for every image (folder input).")] = None,
    source_name: Annotated[
        str, typer.Option("--source", help="Dataset name recorded on each instruction.")
    ] = "",
    assign: Annotated[
        bool, typer.Option(help="Assign models from the registry when a record names none.")
    ] = True,
) -> None:
    """Publish instructions: images go to the blob store, events to vlf.instructions.v1."""
    from shared.runtime.admin import EventPublisher
    from shared.submit import Refused, build_instruction, folder_records, read_jsonl

    settings = CommonSettings()
    if not source.exists():
        fail(f"{source} does not exist", "give a JSONL file or a folder of images")
    if source.is_dir():
        if not prompt:
            fail("a folder of images needs --prompt", "vlf submit ./images --prompt 'Describe the image.'")
        records, base_dir = list(folder_records(source, prompt, source_name)), source
    else:
        records, base_dir = list(read_jsonl(source)), source.parent
    registry = Registry.load(settings.registry_path) if assign and settings.registry_path.exists() else None
    policy = ImagePolicy(local_roots=(base_dir.resolve(), Path.cwd()))
    blobs = BlobStore(settings.blob_url)
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    published, refused = [], []
    with EventPublisher(settings) as publisher, Progress(console=console) as progress:
        task = progress.add_task("submitting", total=len(records))
        for where, record in records:
            progress.advance(task)
            if isinstance(record, Refused):
                refused.append(record)
                continue
            try:
                instruction = build_instruction(
                    record, base_dir=base_dir, policy=policy, blobs=blobs, registry=registry
                )
            except VlfError as exc:
                refused.append(Refused(where=where, reason=str(exc)))
                continue
            ledger.record(instruction)
            publisher.publish([instruction])
            published.append(instruction.instruction_id)
    console.print(f"published {len(published)} instructions to {settings.topic_namespace}vlf.instructions.v1")
    for item in refused:
        console.print(f"[yellow]refused[/] {item.where}: {item.reason}")
    if refused and not published:
        raise typer.Exit(1)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Per stage: submitted, answered, rated, paired; jobs; judge spend; DLQ sizes; consumer lag."""
    from shared.status import pipeline_status

    settings = CommonSettings()
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    try:
        report = pipeline_status(ledger, settings)
    except Exception as exc:  # a CLI reports any broker failure as one line
        fail(
            f"cannot read Kafka at {settings.kafka_bootstrap_servers}: {exc}", "start it with `vlf kafka up`"
        )
    if as_json:
        console.print_json(json.dumps(report.model_dump()))
        return
    table = Table(title="pipeline")
    table.add_column("stage")
    table.add_column("count", justify="right")
    for stage, count in report.stages.items():
        table.add_row(stage, str(count))
    console.print(table)
    for name, values in (
        ("DLQ sizes", report.dlq_sizes),
        ("consumer lag", report.consumer_lag),
        ("judge spend (USD)", report.judge_spend_usd),
    ):
        if values:
            console.print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    for job in report.jobs:
        console.print(
            f"job {job['id']} ({job['kind']}): {job['status']} step={job['step']} {job['error'] or ''}"
        )
