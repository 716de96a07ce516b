"""``vlf import``, ``vlf export`` and ``vlf stats``: the dataset in and out, VLFeedback-compatible."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from shared.blobs.store import BlobStore
from shared.ledger import Ledger
from shared.settings import CommonSettings
from vlf.cli.output import console, fail

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard

export_app = typer.Typer(
    help="Export pairs for TRL, or the whole dataset in the VLFeedback layout.", no_args_is_help=True
)


def _open() -> tuple[Ledger, BlobStore]:
    settings = CommonSettings()
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    return ledger, BlobStore(settings.blob_url)


def _dataset_io() -> ModuleType:
    """The import/export module, which needs ``datasets``: a base install says what to add."""
    try:
        from services.pair_builder import dataset_io
    except ImportError as error:
        fail(f"the data commands need the data extra ({error})", "pip install 'vlfeedback[data]'")
    return dataset_io


def import_command(
    source: Annotated[
        str,
        typer.Argument(
            help="VLFeedback-layout JSONL or Parquet (the released files or our export), or a release "
            "folder on the Hub or any fsspec URL (hf://datasets/MMInstruction/VLFeedback, https://..., "
            "a local folder) holding vlfeedback_80k.jsonl and merged_images.zip."
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder that img_path values are relative to (default: the file's folder, or the "
            "release's extracted merged_images.zip)."
        ),
    ] = None,
    judge_id: Annotated[
        str, typer.Option("--judge", help="Judge id the imported ratings are recorded under.")
    ] = "vlfeedback-gpt4v",
    download_dir: Annotated[
        Path, typer.Option(help="Where a remote release is copied (once) and its images extracted.")
    ] = Path(".vlf/imports"),
) -> None:
    """Import instructions, answers and ratings into the ledger, and the pairs the pair builder's rule
    (its VLF_PAIRS_* settings) makes of them, ready for ``vlf train`` (idempotent: a re-run adds nothing)."""
    from services.pair_builder.backfill import backfill_pairs

    import_vlfeedback = _dataset_io().import_vlfeedback
    from services.pair_builder.settings import PairBuilderSettings
    from vlf.dataset_source import DatasetSourceError, fetch, is_remote

    pair_settings = PairBuilderSettings()
    path = Path(source)
    if is_remote(source) or path.is_dir():
        try:
            local = fetch(source, download_dir)
        except (DatasetSourceError, OSError) as error:
            fail(
                f"cannot read {source}: {error}", "name a .jsonl/.parquet file or a VLFeedback release folder"
            )
        path, images = local.records, images or local.image_root
    elif not path.is_file():
        fail(f"{source} does not exist", "name a .jsonl/.parquet file, a release folder or a URL")
    ledger, blobs = _open()
    report = import_vlfeedback(
        path,
        images or path.parent,
        ledger,
        blobs,
        judge_id=judge_id,
        heldout_fraction=pair_settings.heldout_fraction,
        seed=pair_settings.seed,
    )
    console.print(
        f"imported {report.records_imported} of {report.records_read} records "
        f"({report.facts_inserted} new facts) in {report.seconds:.1f}s"
    )
    new_pairs = backfill_pairs(ledger, pair_settings)
    console.print(f"{new_pairs} new preference pairs (strategy {pair_settings.strategy})")
    if report.pair_rows:
        console.print(
            f"{report.pair_rows} RLAIF-V rows recorded as pairs of strategy rlaif-v "
            "(`vlf train BASE --strategy rlaif-v`)"
        )
    for problem in report.problems:
        console.print(f"[yellow]problem[/] {escape(problem)}")  # quotes the user's file
    if report.invalid_records or report.missing_images:
        raise typer.Exit(1)


@export_app.command("vlfeedback")
def export_vlfeedback_command(
    out: Annotated[Path, typer.Argument(help="OUT.jsonl or OUT.parquet")],
    images: Annotated[Path, typer.Option(help="Folder to write the images into.")],
    judge_id: Annotated[str, typer.Option("--judge", help="Whose ratings to export.")] = "vlfeedback-gpt4v",
    push_to: Annotated[
        str | None,
        typer.Option(help="Hugging Face dataset repo (images as an Image feature); token from HF_TOKEN."),
    ] = None,
) -> None:
    """One record per instruction: id, prompt, models, img_path, completions with their annotations."""
    from collections import Counter

    from vlf.dataset_card import dataset_card, judge_description

    dataset_io = _dataset_io()
    ledger, blobs = _open()
    report = dataset_io.export_vlfeedback(ledger, blobs, out, images, judge_id)
    console.print(f"exported {report.records} records to {', '.join(report.paths)}")
    models = Counter(
        completion["model"]
        for record, _ in dataset_io.read_records(out, on_bad_line=lambda _problem: None)
        for completion in record["completions"]
    )
    card = dataset_card(
        title="VLFeedback-layout AI feedback",
        layout="VLFeedback (id, prompt, models, img_path, completions with ratings, rationales) and image",
        judges=[judge_description(judge_id, CommonSettings().registry_path)],
        models=models,
        rule={"ratings": "1-5 per aspect, as the judge gave them (pairs are made by the pair rule on use)"},
        counts={"instructions": report.records},
    )
    card.save(out.with_name(f"{out.stem}.README.md"))  # beside the export: never over a README of the user's
    if push_to:
        token = _hub_token()
        dataset_io.vlfeedback_hub_dataset(out, images).push_to_hub(push_to, token=token, private=True)
        console.print(f"pushed to {dataset_io.push_card(push_to, token, card)}")


@export_app.command("trl")
def export_trl_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the datasets copy and the Parquet file.")],
    strategy: Annotated[str, typer.Option(help="Pair strategy.")] = "vlfeedback",
    split: Annotated[str, typer.Option(help="train or heldout.")] = "train",
    judge_id: Annotated[list[str] | None, typer.Option("--judge", help="Only pairs of these judges.")] = None,
    push_to: Annotated[
        str | None, typer.Option(help="Hugging Face dataset repo; token from HF_TOKEN.")
    ] = None,
) -> None:
    """TRL's conversational preference format with images, accepted by DPOTrainer as is."""
    dataset_io = _dataset_io()

    ledger, blobs = _open()
    report = dataset_io.export_preference_dataset(
        ledger, blobs, out_dir, strategy=strategy, split=split, judge_ids=judge_id
    )
    if report.records == 0:
        console.print(
            f"no pairs of strategy {strategy!r} in split {split!r}; wrote an empty split to "
            f"{', '.join(report.paths)} (the held-out split is VLF_PAIRS_HELDOUT_FRACTION of instructions)"
        )
    else:
        console.print(f"exported {report.records} pairs to {', '.join(report.paths)}")
    card = _pairs_card(ledger, strategy, split, judge_id, report.records)
    card.save(out_dir / "README.md")
    if push_to:
        token = _hub_token()
        dataset_io.push_to_hub(out_dir / "dataset", push_to, token)
        console.print(f"pushed to {dataset_io.push_card(push_to, token, card)}")


def _hub_token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        fail("--push-to needs HF_TOKEN in the environment", "export HF_TOKEN=<a token with write access>")
    return token


def _pairs_card(
    ledger: Ledger, strategy: str, split: str, judge_ids: list[str] | None, exported: int
) -> DatasetCard:
    """The TRL export's card, from the pairs it holds (read again from the ledger)."""
    from collections import Counter

    from shared.contracts import events as ev
    from shared.ml.training_pairs import select_pairs
    from vlf.dataset_card import dataset_card, judge_description

    pairs = select_pairs(
        ledger, ev.DatasetSelector(split=split, strategy=strategy, judge_ids=judge_ids or [])
    )
    models = Counter(side.model_id for pair in pairs for side in (pair.chosen, pair.rejected))
    judges = sorted({judge for pair in pairs for judge in pair.judge_ids})
    registry = CommonSettings().registry_path
    return dataset_card(
        title=f"VLFeedback-style preference pairs ({strategy}, {split})",
        layout="TRL conversational preference format (images, prompt, chosen, rejected, margin)",
        judges=[judge_description(judge, registry) for judge in judges],
        models=models,
        rule={"strategy": strategy, "split": split, "judges": judge_ids or "every judge"},
        counts={"pairs": exported, "instructions": len({pair.instruction_id for pair in pairs})},
    )


def stats_command(
    strategy: Annotated[str, typer.Option(help="Pair strategy the pair counts use.")] = "vlfeedback",
    min_margin: Annotated[float, typer.Option(help="For strategy min_margin.")] = 0.0,
    judge_id: Annotated[list[str] | None, typer.Option("--judge", help="Only these judges' ratings.")] = None,
    quorum: Annotated[
        int | None, typer.Option(help="For strategy agreement: judges that must order a pair alike.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per model mean ratings per aspect, rating histograms, pairs made, ties, skipped, margins, and
    the agreement of every two judges (weighted kappa per aspect, share of answer pairs ordered alike)."""
    from pydantic import ValidationError

    from services.pair_builder.rules import PairRule
    from services.pair_builder.stats import collect_stats

    try:
        rule = PairRule(
            strategy=strategy, min_margin=min_margin, judge_ids=tuple(judge_id or ()), quorum=quorum
        )
    except ValidationError as exc:
        fail(
            "; ".join(e["msg"] for e in exc.errors()),
            "strategy agreement takes --judge twice or more, and --quorum at most that many",
        )
    ledger, _ = _open()
    stats = collect_stats(ledger, rule)
    if as_json:
        console.print_json(json.dumps(stats.model_dump(mode="json")))
    else:
        from vlf.cli.stats_tables import stats_tables

        console.print(stats_tables(stats))
