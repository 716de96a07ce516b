"""The ``vlf`` command line: one command per pipeline stage. Errors are one line plus a hint."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devkit import kafka_local
from shared.ledger import Ledger
from shared.ledger.tables import JobRow
from shared.registry import Registry
from shared.settings import CommonSettings
from vlf.cli.dataset_cmd import export_app, import_command, stats_command
from vlf.cli.dlq_cmd import app as dlq_app
from vlf.cli.output import console, err, fail
from vlf.cli.report_cmd import app as report_app
from vlf.follow import JobView, JobWaitTimeout, evaluation_view, training_view, wait_for_job

if TYPE_CHECKING:
    from shared.contracts import events as ev

app = typer.Typer(
    help="VLFeedback pipeline: sample, judge, pair, train and evaluate LVLMs over Kafka.",
    no_args_is_help=True,
)
kafka_app = typer.Typer(help="The local single-node Kafka broker.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(report_app, name="report")
app.add_typer(dlq_app, name="dlq")
app.add_typer(export_app, name="export")
app.command("import")(import_command)
app.command("stats")(stats_command)


def _print_version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        console.print(f"vlf {version('vlfeedback')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """VLFeedback pipeline: sample, judge, pair, train and evaluate LVLMs over Kafka."""


@kafka_app.command("up")
def kafka_up() -> None:
    """Fetch (once), format (once) and start the local broker; wait until it accepts clients."""
    cfg = kafka_local.BrokerConfig()
    try:
        bootstrap = kafka_local.start_broker(cfg)
    except kafka_local.BrokerError as exc:
        fail(str(exc), "is Java 17 on PATH and the port free? `vlf kafka down` stops an old broker")
    console.print(f"kafka broker ready on {bootstrap} (data in {cfg.data_dir})")


@kafka_app.command("status")
def kafka_status() -> None:
    """Whether the local broker runs and accepts clients (exit 0), or not (exit 1)."""
    cfg = kafka_local.BrokerConfig()
    if not kafka_local.broker_running(cfg):
        err.print(f"no local broker runs with data in {cfg.data_dir}; start one with `vlf kafka up`")
        raise typer.Exit(1)
    pid = cfg.pid_file.read_text().strip()
    if not kafka_local.accepts_clients(cfg.bootstrap):
        err.print(
            f"kafka broker pid {pid} runs on {cfg.bootstrap} but accepts no clients yet; see {cfg.broker_log}"
        )
        raise typer.Exit(1)
    console.print(f"kafka broker ready on {cfg.bootstrap} (pid {pid}, data in {cfg.data_dir})")


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
    from vlf.submit import folder_records, read_jsonl, submit_records

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
    with Progress(console=console) as progress:
        task = progress.add_task("submitting", total=len(records))
        outcome = submit_records(
            records,
            base_dir=base_dir,
            settings=settings,
            registry=registry,
            on_record=lambda: progress.advance(task),
        )
    console.print(
        f"published {len(outcome.published)} instructions to {settings.topic_namespace}vlf.instructions.v1"
    )
    for item in outcome.refused:  # where and reason quote the user's file: text, not markup
        console.print(f"[yellow]refused[/] {escape(item.where)}: {escape(item.reason)}")
    if outcome.refused and not outcome.published:
        raise typer.Exit(1)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Per stage: submitted, answered, rated, paired; jobs; spend; DLQ sizes; consumer lag."""
    from vlf.status import pipeline_status

    settings = CommonSettings()
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    registry = Registry.load(settings.registry_path) if settings.registry_path.exists() else None
    try:
        report = pipeline_status(ledger, settings, registry)
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
        ("model spend (USD, registry prices)", report.model_spend_usd),
    ):
        if values:
            console.print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    for judge, spend in sorted(report.judge_spend.items()):
        console.print(
            f"judge {judge} spend (USD): {spend.total_usd:.4f} = input {spend.input_usd:.4f}"
            f" + cached input {spend.cached_input_usd:.4f} + output {spend.output_usd:.4f}"
            f" ({spend.calls} calls; {spend.cached_prompt_tokens} of {spend.prompt_tokens} prompt tokens"
            f" cached; {spend.batch_usd:.4f} of it at the batch rate)"
        )
    for job in report.jobs:
        console.print(
            escape(
                f"job {job['id']} ({job['kind']}): {job['status']} step={job['step']} {job['error'] or ''}"
            )
        )


@app.command()
def up(
    procfile_out: Annotated[
        Path, typer.Option("--procfile", help="Where to write the generated Procfile.")
    ] = Path(".vlf/Procfile"),
) -> None:
    """Run every service of the registry locally, one process each, under honcho (Ctrl-C stops all)."""
    import os
    import subprocess
    import sys

    from vlf.procfile import procfile

    settings = CommonSettings()
    if not settings.registry_path.exists():
        fail(f"registry {settings.registry_path} not found", "set VLF_REGISTRY_PATH or write registry.yaml")
    procfile_out.parent.mkdir(parents=True, exist_ok=True)
    procfile_out.write_text(procfile(Registry.load(settings.registry_path)))
    console.print(f"wrote {procfile_out}; starting services with honcho")
    honcho = Path(sys.executable).with_name("honcho")
    raise typer.Exit(subprocess.call([str(honcho), "-f", str(procfile_out), "-d", os.getcwd(), "start"]))


@app.command()
def train(
    base_model: Annotated[str, typer.Argument(help="Hub id or local path of an image-text-to-text model.")],
    job_id: Annotated[str | None, typer.Option(help="Default: derived from the time.")] = None,
    judge: Annotated[list[str] | None, typer.Option(help="Use pairs from these judges only.")] = None,
    strategy: Annotated[str, typer.Option(help="Pair strategy to train on.")] = "vlfeedback",
    min_margin: Annotated[float, typer.Option(help="Drop pairs with a smaller score gap.")] = 0.0,
    loss_type: Annotated[
        list[str] | None, typer.Option(help="TRL DPO losses, e.g. --loss-type sigmoid --loss-type sft.")
    ] = None,
    lora: Annotated[bool, typer.Option(help="LoRA (the paper) or a full fine-tune.")] = True,
    epochs: Annotated[float | None, typer.Option(help="Epochs (paper: 3).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML recipe in DPOConfig names (beta, num_train_epochs, ...), LoraConfig names under "
            "lora:; the options above override it."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end; exit 1 if it fails.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
) -> None:
    """Request a DPO run with the paper's hyperparameters, or a recipe file's, overridden by options."""
    import time
    import uuid

    from shared.contracts import events as ev
    from shared.runtime.admin import EventPublisher
    from vlf.train_config import TrainConfigError, read_train_config

    try:
        hparams, lora_spec = read_train_config(config) if config else (ev.TrainHyperparams(), ev.LoraSpec())
    except TrainConfigError as error:
        fail(str(error), "keys are DPOConfig names; see `vlf train --help`")
    overrides = {"num_train_epochs": epochs, "max_steps": max_steps, "loss_type": loss_type or None}
    hparams = ev.TrainHyperparams(
        **{**hparams.model_dump(), **{key: value for key, value in overrides.items() if value is not None}}
    )
    request = ev.TrainRequest(
        job_id=job_id or f"train-{int(time.time())}-{uuid.uuid4().hex[:6]}",
        base_model=base_model,
        dataset=ev.DatasetSelector(judge_ids=judge or [], strategy=strategy, min_margin=min_margin),
        use_lora=lora,
        lora=lora_spec,
        hparams=hparams,
    )
    with EventPublisher(CommonSettings()) as publisher:
        publisher.publish([request])
    if not wait:
        console.print(f"requested training job {request.job_id}; follow it with `vlf status`")
        return
    console.print(f"requested training job {request.job_id}")
    with closing(Ledger(CommonSettings().ledger_url)) as ledger:
        follow_job(ledger, request.job_id, training_view, timeout)


@app.command("eval")
def evaluate(
    base_model: Annotated[str, typer.Argument(help="Hub id, local path, or the served model name.")],
    benchmark: Annotated[
        list[str], typer.Option(help="mme, mmhal, mmvet, preference_accuracy, greedy_accuracy.")
    ],
    name: Annotated[str, typer.Option(help="Label in reports.")] = "model",
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter folder to apply.")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Registry id of the model serving it (the registry holds its URL and key)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the job to its end; exit 1 if a benchmark fails.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            help="Run it here and now, without broker or evaluator service; exit 1 if a benchmark fails."
        ),
    ] = False,
) -> None:
    """Request an evaluation of any model; results land in the ledger and on vlf.eval.results.v1.

    The evaluator service runs it: start one (`vlf up`, or the chart's evaluator) or the request
    waits on its topic; with --local this process runs it."""
    import time
    import uuid

    from shared.contracts import events as ev
    from shared.runtime.admin import EventPublisher

    request = ev.EvalRequest(
        eval_id=f"eval-{int(time.time())}-{uuid.uuid4().hex[:6]}",
        model=ev.ModelRef(name=name, base_model=base_model, adapter_uri=adapter, endpoint_id=endpoint),
        benchmarks=benchmark,
    )
    if local:
        _evaluate_here(request)
        return
    with EventPublisher(CommonSettings()) as publisher:
        publisher.publish([request])
    if not wait:
        console.print(f"requested evaluation {request.eval_id}; follow it with `vlf status`")
        return
    console.print(f"requested evaluation {request.eval_id}")
    with closing(Ledger(CommonSettings().ledger_url)) as ledger:
        follow_job(ledger, request.eval_id, evaluation_view(ledger, request.eval_id, benchmark), timeout)


def follow_job(
    ledger: Ledger, job_id: str, view: Callable[[JobRow | None], JobView], timeout_s: float | None
) -> None:
    """Show the job's progress until it ends; exit 1 if it failed, 2 if the wait ran out."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[figures]}"),
        console=console,
    ) as bar:
        task = bar.add_task(job_id, total=None, figures="")

        def show(row: JobRow | None) -> None:
            shown = view(row)
            bar.update(
                task,
                description=f"{job_id} {shown.status}",
                completed=shown.completed,
                total=shown.total,
                figures=escape(shown.figures),
            )

        try:
            row = wait_for_job(ledger, job_id, show, timeout_s=timeout_s)
        except JobWaitTimeout as exc:
            fail(str(exc), "the job goes on: follow it with `vlf status`")
    if row.status == "failed":
        err.print(f"[bold red]job {escape(job_id)} failed:[/] {escape(row.error or 'no reason recorded')}")
        raise typer.Exit(1)
    console.print(f"job {job_id} completed")


def _evaluate_here(request: ev.EvalRequest) -> None:
    from services.evaluator.settings import EvaluatorSettings
    from shared.errors import PermanentError
    from vlf.eval_local import evaluate_locally

    try:
        results = evaluate_locally(request, CommonSettings(), EvaluatorSettings())
    except PermanentError as error:
        fail(str(error), "check the benchmark names, --adapter and --endpoint (a registry model id)")
    table = Table("benchmark", "status", "metrics", title=f"evaluation {request.eval_id}")
    for result in results:
        figures = ", ".join(f"{key} {value:g}" for key, value in result.metrics.items())
        table.add_row(result.benchmark, result.status, escape(figures or result.error or ""))
    console.print(table)
    if any(result.status == "failed" for result in results):
        raise typer.Exit(1)


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="A shorter run (used by the test suite).")] = False,
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything (cleared first).")] = Path(
        ".vlf/demo"
    ),
) -> None:
    """The whole loop on tiny offline models: sample, judge, pair, train, evaluate, report."""
    from vlf.demo import FULL, QUICK, run_demo

    try:
        result = run_demo(workdir, QUICK if quick else FULL, console)
    except TimeoutError as exc:
        fail(str(exc), f"see {workdir}/services.log and {workdir}/jobs/")
    table = Table(title="base vs tuned (unseen images)")
    for column in ("metric", "base", "tuned"):
        table.add_column(column)
    table.add_row("greedy accuracy", f"{result.base_greedy_accuracy}", f"{result.tuned_greedy_accuracy}")
    table.add_row("held-out preference accuracy", "-", f"{result.tuned_preference_accuracy}")
    console.print(table)
    console.print(f"report: {result.report}")
