"""``vlf dlq show|replay``: look at dead letters, and send them back once their cause is fixed."""

from __future__ import annotations

from typing import Annotated

import typer
from kafka.errors import KafkaError
from rich.markup import escape
from rich.table import Table

from shared.settings import CommonSettings
from vlf import dlq_tools
from vlf.cli.output import console, fail

app = typer.Typer(
    help="Dead-letter queues: list letters, replay them to their source topic.", no_args_is_help=True
)

TopicArg = Annotated[str, typer.Argument(help="Source topic (e.g. vlf.instructions.v1) or its .dlq name.")]


@app.command()
def show(
    topic: TopicArg,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many letters, oldest first.")] = 50,
) -> None:
    """List dead letters: offset, error, attempts, where they came from, the payload's start."""
    settings = CommonSettings()
    try:
        letters = dlq_tools.read_dead_letters(settings, topic, limit=limit)
        marks = dlq_tools.replay_marks(settings, topic)
    except dlq_tools.DlqToolError as exc:
        fail(str(exc), "topic names are listed by `vlf status`")
    except KafkaError as exc:
        fail(
            f"cannot read Kafka at {settings.kafka_bootstrap_servers}: {exc}", "start it with `vlf kafka up`"
        )
    table = Table(title=f"{settings.topic_namespace}{dlq_tools.source_spec(topic).dlq}")
    for column in ("offset", "error", "attempts", "source offset", "replayed"):
        table.add_column(column, no_wrap=True)
    for column in ("message", "payload"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        details = letter.details
        cells = (
            f"{letter.partition}:{letter.offset}",
            letter.error_class,
            details.get("attempts", ""),
            f"{details.get('source.partition', '?')}:{details.get('source.offset', '?')}",
            "yes" if marks[letter.partition].is_done(letter.offset) else "no",
            details.get("error.message", ""),
            letter.payload_preview,
        )
        table.add_row(*map(escape, cells))  # a letter's headers and payload are event data, not markup
    console.print(table)


@app.command()
def replay(
    topic: TopicArg,
    where: Annotated[
        str | None, typer.Option(help="Only letters whose DLQ header matches, e.g. error.class=BlobNotFound.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be replayed; send nothing.")
    ] = False,
) -> None:
    """Re-publish not-yet-replayed letters (original key, value, headers) to their source topic."""
    settings = CommonSettings()
    try:
        outcome = dlq_tools.replay(settings, topic, where=dlq_tools.parse_where(where), dry_run=dry_run)
    except dlq_tools.DlqToolError as exc:
        fail(str(exc), "`vlf dlq show <topic>` lists the letters and their headers")
    except KafkaError as exc:
        fail(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}", "start it with `vlf kafka up`"
        )
    verb = "would replay" if outcome.dry_run else "replayed"
    for letter in outcome.replayed:
        console.print(escape(f"{verb} {letter.partition}:{letter.offset} ({letter.error_class})"))
    console.print(
        f"{verb} {len(outcome.replayed)} letters to {settings.topic_namespace}"
        f"{dlq_tools.source_spec(topic).name}; {outcome.skipped_by_filter} left by the filter"
    )
