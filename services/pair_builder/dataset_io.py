"""Datasets in and out of the ledger: the released VLFeedback layout both ways, TRL's preference format
out, and publishing to the Hugging Face Hub.

VLFeedback layout (DESIGN.md), one record per instruction, keys in this order::

    {"id", "prompt", "models": [4 model ids], "img_path",
     "completions": [{"model", "response",
                      "annotations": {"Helpfulness": {"Rating": "4", "Rationale": "..."},
                                      "Ethical Considerations": {...}, "Visual Faithfulness": {...}}}]}

Import decisions:
- the instruction id is the record's ``id`` (the caller's id) when it fits the contract (8 to 128
  characters), else a hash of it; the original ``id`` and ``img_path`` are kept in the
  instruction's metadata, so export writes them back unchanged;
- response ids are ``response_id(instruction id, model, default sampling, n-th answer of that
  model)``, the annotation id ``annotation_id(...)``, so a re-run inserts nothing new;
- ratings stay raw: ``raw`` is the string as released, ``rating`` its number when it is one in
  1..5, else None (the pair rule then skips that answer);
- a record whose image file is missing, lies outside ``image_root`` or is not an image ``vlf
  submit`` would accept (both use ``load_valid_image``) is not imported, only counted and named in
  the report: an instruction without its image would teach a model to answer questions about a
  picture it cannot see, and since facts never change, importing it imageless
  would block the complete record when the image turns up and the import is re-run;
- a record that does not fit the contracts is counted and named, and the import carries on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from huggingface_hub.errors import EntryNotFoundError
from pydantic import BaseModel, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from services.pair_builder.rlaif_v import is_rlaif_v_row, rlaif_v_facts
from shared.blobs.errors import ImageSourceRefused, ImageSourceUnavailable, InvalidImage
from shared.blobs.images import ImagePolicy, load_valid_image, validate_image
from shared.blobs.store import BlobStore, blob_uri, parse_blob_uri
from shared.contracts import events as ev
from shared.contracts.events import SamplingParams
from shared.contracts.ids import annotation_id, response_id, stable_hash
from shared.ledger import Ledger
from shared.ml.preference_data import TRAINING_FEATURES, preference_row

VLFEEDBACK_JUDGE = "vlfeedback-gpt4v"
RELEASED_ASPECT_ORDER = (
    ev.Aspect.HELPFULNESS,
    ev.Aspect.ETHICAL_CONSIDERATIONS,
    ev.Aspect.VISUAL_FAITHFULNESS,
)
SOURCE_ID_KEY = "vlfeedback_id"
IMG_PATH_KEY = "img_path"
RLAIF_V_IMAGE_KEY = "image_path"
IMPORT_BATCH_FACTS = 3000  # ~500 records of 4 answers per ledger transaction
_BLOB_SUFFIX = re.compile(r"\.[a-z0-9]{1,16}")
EXAMPLES_KEPT = 20

_RATING_TYPE = pa.struct([("Rating", pa.string()), ("Rationale", pa.string())])
VLFEEDBACK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("models", pa.list_(pa.string())),
        ("img_path", pa.string()),
        (
            "completions",
            pa.list_(
                pa.struct(
                    [
                        ("model", pa.string()),
                        ("response", pa.string()),
                        ("annotations", pa.struct([(a.value, _RATING_TYPE) for a in RELEASED_ASPECT_ORDER])),
                    ]
                )
            ),
        ),
    ]
)

PREFERENCE_FEATURES = datasets.Features({**TRAINING_FEATURES, "margin": datasets.Value("float64")})


@dataclass(frozen=True, slots=True)
class ImportRule:
    """Whose ratings a VLFeedback record holds, and how RLAIF-V pairs are split."""

    judge_id: str
    heldout_fraction: float
    seed: int


class ImportReport(BaseModel):
    records_read: int = 0
    records_imported: int = 0
    facts_inserted: int = 0
    missing_images: int = 0
    refused_images: int = 0
    invalid_records: int = 0
    pair_rows: int = 0  # RLAIF-V rows, recorded as pairs of strategy rlaif-v
    problems: list[str] = []
    seconds: float = 0.0

    def note(self, problem: str) -> None:
        if len(self.problems) < EXAMPLES_KEPT:
            self.problems.append(problem)

    def bad_line(self, problem: str) -> None:
        self.records_read += 1
        self.invalid_records += 1
        self.note(problem)


class ExportReport(BaseModel):
    records: int = 0
    images_written: int = 0
    duplicates_skipped: int = 0
    paths: list[str] = []


# --- import ---------------------------------------------------------------------------------------


def parse_rating(raw: str) -> float | None:
    """The number a released rating string holds, or None (e.g. "N/A", "", "7")."""
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and 1 <= value <= 5 else None


def imported_instruction_id(source_id: str) -> str:
    return source_id if 8 <= len(source_id) <= 128 else stable_hash("vlfeedback", source_id)


def record_facts(record: dict[str, Any], image_uris: list[str], judge_id: str) -> list[ev.Event]:
    """The Instruction, Responses and Annotation one VLFeedback record holds (pure)."""
    source_id = str(record["id"])
    instruction = ev.Instruction(
        instruction_id=imported_instruction_id(source_id),
        prompt=record["prompt"],
        image_uris=image_uris,
        models=list(record.get("models") or []),
        metadata={SOURCE_ID_KEY: source_id, IMG_PATH_KEY: record.get("img_path") or ""},
    )
    sampling = SamplingParams()
    seen: dict[str, int] = {}
    responses, rated = [], []
    for position, completion in enumerate(record["completions"]):
        model_id = completion["model"]
        index = seen[model_id] = seen.get(model_id, -1) + 1
        text = completion["response"]
        response = ev.Response(
            response_id=response_id(instruction.instruction_id, model_id, sampling.model_dump(), index),
            instruction=instruction,
            model_id=model_id,
            sample_index=index,
            sampling=sampling,
            text=text,
            status="answered" if text.strip() else "empty",
            finish_reason="unknown",
        )
        responses.append(response)
        rated.append(
            ev.RatedResponse(
                response_id=response.response_id,
                model_id=model_id,
                text=text,
                shown_position=position,
                ratings=_ratings(completion.get("annotations") or {}),
            )
        )
    annotation = ev.Annotation(
        annotation_id=annotation_id(
            instruction.instruction_id, judge_id, "all_in_one", [r.response_id for r in responses]
        ),
        instruction=instruction,
        judge_id=judge_id,
        mode="all_in_one",
        rated=rated,
    )
    return [instruction, *responses, annotation]


def _ratings(annotations: dict[str, Any]) -> dict[ev.Aspect, ev.AspectRating]:
    ratings = {}
    for aspect, judged in annotations.items():
        if judged is None:  # Parquet stores an aspect the record lacks as null
            continue
        raw = str(judged.get("Rating", ""))
        ratings[ev.Aspect(aspect)] = ev.AspectRating(
            rating=parse_rating(raw), raw=raw, rationale=judged.get("Rationale") or ""
        )
    return ratings


def read_records(
    path: Path, on_bad_line: Callable[[str], None], batch_rows: int = 1000
) -> Iterator[tuple[dict[str, Any], int]]:
    """Stream (record, progress units): bytes for JSONL, rows for Parquet. Memory stays flat.
    A JSONL line that is not a JSON object is reported to ``on_bad_line`` and skipped."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                yield record, 1
        return
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                on_bad_line(f"line {number}: not JSON: {error}")
                continue
            if not isinstance(record, dict):
                on_bad_line(f"line {number}: not a JSON object")
                continue
            yield record, len(line)


def progress_total(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else path.stat().st_size


def import_vlfeedback(
    path: Path,
    image_root: Path,
    ledger: Ledger,
    blobs: BlobStore,
    judge_id: str = VLFEEDBACK_JUDGE,
    *,
    show_progress: bool = True,
    heldout_fraction: float = 0.005,
    seed: int = 42,
) -> ImportReport:
    """Import a VLFeedback-layout JSONL or Parquet file (see the module docstring); safe to re-run.
    RLAIF-V rows (``question, chosen, rejected, ...``) in the same file are recorded as the pairs
    they are (``services.pair_builder.rlaif_v``), split by ``heldout_fraction`` and ``seed``."""
    started = time.monotonic()
    report = ImportReport()
    policy = ImagePolicy(local_roots=(Path(image_root),))
    rule = ImportRule(judge_id, heldout_fraction, seed)
    pending: list[ev.Event] = []
    with _progress(show_progress) as progress:
        task = progress.add_task(f"importing {Path(path).name}", total=progress_total(Path(path)))
        for record, advance in read_records(Path(path), report.bad_line):
            progress.advance(task, advance)
            report.records_read += 1
            facts = _import_one(record, Path(image_root), policy, blobs, report, rule)
            if facts:
                report.records_imported += 1
                pending.extend(facts)
            if len(pending) >= IMPORT_BATCH_FACTS:
                report.facts_inserted += ledger.record(*pending)
                pending.clear()
        if pending:
            report.facts_inserted += ledger.record(*pending)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _import_one(
    record: dict[str, Any],
    image_root: Path,
    policy: ImagePolicy,
    blobs: BlobStore,
    report: ImportReport,
    rule: ImportRule,
) -> list[ev.Event]:
    record_id = str(record.get("id", record.get("idx", f"#{report.records_read}")))
    record, embedded = _without_embedded_image(record)
    img_path = record.get(IMG_PATH_KEY) or record.get(RLAIF_V_IMAGE_KEY) or ""
    image_uris = []
    if embedded is not None:
        try:
            data = embedded
            validate_image(data, policy)  # the checks `vlf submit` makes
        except InvalidImage as error:
            report.refused_images += 1
            report.note(f"{record_id}: image refused: {error}")
            return []
        image_uris.append(blob_uri(data, suffix=_image_suffix(img_path)))
    elif img_path:
        try:
            data, _ = load_valid_image(str(image_root / img_path), policy)  # the checks `vlf submit` makes
        except ImageSourceUnavailable:
            report.missing_images += 1
            report.note(f"{record_id}: no image file {img_path!r}")
            return []
        except (ImageSourceRefused, InvalidImage) as error:
            report.refused_images += 1
            report.note(f"{record_id}: image refused: {error}")
            return []
        image_uris.append(blob_uri(data, suffix=_image_suffix(img_path)))
    try:
        if is_rlaif_v_row(record):
            image_sha256 = hashlib.sha256(data).hexdigest() if image_uris else ""
            facts = rlaif_v_facts(record, image_uris, image_sha256, rule.heldout_fraction, rule.seed)
            report.pair_rows += 1
        else:
            facts = record_facts(record, image_uris, rule.judge_id)
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # ValidationError is a ValueError
        report.invalid_records += 1
        report.note(f"{record_id}: invalid record: {_short(error)}")
        return []
    if image_uris:
        blobs.put(data, suffix=_image_suffix(img_path))
    return facts


def _without_embedded_image(record: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """A Parquet row may carry its image as a ``datasets`` Image value (``{"bytes", "path"}``), in
    ``image`` or in ``img_path`` itself: the bytes, and the record with ``img_path`` as a name."""
    for key in ("image", IMG_PATH_KEY):
        value = record.get(key)
        if isinstance(value, dict) and value.get("bytes"):
            name = (
                record.get(IMG_PATH_KEY) or record.get(RLAIF_V_IMAGE_KEY)
                if key == "image"
                else value.get("path")
            )
            rest = {k: v for k, v in record.items() if k != "image"}
            return {**rest, IMG_PATH_KEY: name if isinstance(name, str) else ""}, bytes(value["bytes"])
    return record, None


def _image_suffix(img_path: str) -> str:
    suffix = PurePosixPath(img_path).suffix.lower()
    return suffix if _BLOB_SUFFIX.fullmatch(suffix) else ""


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return f"{type(error).__name__}: {error}"


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


# --- VLFeedback export ----------------------------------------------------------------------------


def vlfeedback_record(annotation: ev.Annotation, img_path: str) -> dict[str, Any]:
    """One released-layout record from one annotation (pure); ratings as their raw strings."""
    instruction = annotation.instruction
    return {
        "id": instruction.metadata.get(SOURCE_ID_KEY, instruction.instruction_id),
        "prompt": instruction.prompt,
        "models": instruction.models or [r.model_id for r in annotation.rated],
        "img_path": img_path,
        "completions": [
            {
                "model": rated.model_id,
                "response": rated.text,
                "annotations": {
                    aspect.value: {"Rating": judged.raw, "Rationale": judged.rationale}
                    for aspect in RELEASED_ASPECT_ORDER
                    if (judged := rated.ratings.get(aspect)) is not None
                },
            }
            for rated in annotation.rated
        ],
    }


def export_img_path(instruction: ev.Instruction) -> str:
    """The imported ``img_path`` when it is a plain relative path, else ``<sha256><suffix>``."""
    kept = instruction.metadata.get(IMG_PATH_KEY, "")
    if kept and not PurePosixPath(kept).is_absolute() and ".." not in PurePosixPath(kept).parts:
        return kept
    if not instruction.image_uris:
        return ""
    hex_digest, suffix = parse_blob_uri(instruction.image_uris[0])
    return f"{hex_digest}{suffix}"


def export_vlfeedback(
    ledger: Ledger,
    blobs: BlobStore,
    out_path: Path,
    image_dir: Path,
    judge_id: str = VLFEEDBACK_JUDGE,
) -> ExportReport:
    """Write every instruction ``judge_id`` rated as a VLFeedback record (``.jsonl`` or ``.parquet``),
    and its first image under ``image_dir`` at ``img_path``. One record per instruction: when the
    judge annotated an instruction twice, the oldest annotation is kept (a set of ids is held)."""
    out_path, image_dir = Path(out_path), Path(image_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(paths=[str(out_path), str(image_dir)])
    seen: set[str] = set()

    def records() -> Iterator[dict[str, Any]]:
        for annotation in ledger.iter_facts(ev.Annotation, judge_id=judge_id):
            if annotation.instruction_id in seen:
                report.duplicates_skipped += 1
                continue
            seen.add(annotation.instruction_id)
            instruction = annotation.instruction
            img_path = export_img_path(instruction)
            if img_path and instruction.image_uris:
                report.images_written += _write_image(blobs, instruction.image_uris[0], image_dir / img_path)
            report.records += 1
            yield vlfeedback_record(annotation, img_path)

    if out_path.suffix == ".parquet":
        _write_parquet(records(), out_path)
    else:
        with out_path.open("w", encoding="utf-8") as out:
            for record in records():
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return report


def _write_image(blobs: BlobStore, uri: str, target: Path) -> bool:
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blobs.get(uri))
    return True


def _write_parquet(records: Iterable[dict[str, Any]], out_path: Path, batch_rows: int = 1000) -> None:
    with pq.ParquetWriter(out_path, VLFEEDBACK_SCHEMA) as writer:
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema=VLFEEDBACK_SCHEMA))
                batch.clear()
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=VLFEEDBACK_SCHEMA))


# --- TRL preference export ------------------------------------------------------------------------


def export_preference_dataset(
    ledger: Ledger,
    blobs: BlobStore,
    out_dir: Path,
    *,
    strategy: str = "vlfeedback",
    split: str = "train",
    judge_ids: list[str] | None = None,
) -> ExportReport:
    """Pairs of one strategy and split as a ``datasets.Dataset``: ``out_dir/dataset`` (save_to_disk,
    for ``load_from_disk``) and ``out_dir/<split>.parquet``. ``judge_ids`` given: only pairs made
    from exactly those judges. Rows are streamed to Arrow files, so memory stays flat."""
    out_dir = Path(out_dir)
    wanted_judges = sorted(judge_ids) if judge_ids else None

    def rows() -> Iterator[dict[str, Any]]:
        cached_uris: list[str] = []
        cached_images: list[bytes] = []
        for pair in ledger.iter_facts(ev.Pair, strategy=strategy, split=split):
            if wanted_judges is not None and pair.judge_ids != wanted_judges:
                continue
            if pair.image_uris != cached_uris:  # an instruction's pairs come together: read its images once
                cached_uris, cached_images = pair.image_uris, [blobs.get(uri) for uri in pair.image_uris]
            row = preference_row(
                pair.pair_id, pair.prompt, cached_images, pair.chosen.text, pair.rejected.text
            )
            yield {**row, "margin": pair.margin}

    with tempfile.TemporaryDirectory() as cache:
        if next(rows(), None) is None:  # datasets refuses a generator that yields nothing
            dataset = datasets.Dataset.from_dict(
                {name: [] for name in PREFERENCE_FEATURES}, PREFERENCE_FEATURES
            )
        else:
            dataset = datasets.Dataset.from_generator(
                rows, features=PREFERENCE_FEATURES, cache_dir=cache, fingerprint=uuid.uuid4().hex
            )
        # one shard at least: datasets writes an empty dataset as zero shards, which load_from_disk refuses
        dataset.save_to_disk(str(out_dir / "dataset"), num_shards=1 if len(dataset) == 0 else None)
        dataset.to_parquet(str(out_dir / f"{split}.parquet"))
        records = len(dataset)
    return ExportReport(records=records, paths=[str(out_dir / "dataset"), str(out_dir / f"{split}.parquet")])


def push_to_hub(dataset_dir: Path, repo_id: str, token: str, *, private: bool = True) -> str:
    """Publish an export: a ``save_to_disk`` folder as a dataset (with its Parquet shards), any other
    folder (a VLFeedback JSONL/Parquet with its images) file for file. Returns the repo URL."""
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / "dataset_info.json").exists():
        datasets.load_from_disk(str(dataset_dir)).push_to_hub(repo_id, token=token, private=private)
    else:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(dataset_dir), repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo_id}"


def push_card(repo_id: str, token: str, card: DatasetCard) -> str:
    """``card`` as the repo's README, keeping the metadata ``datasets`` wrote there (configs,
    features), which the Hub's viewer reads. Returns the repo URL."""
    try:
        written = DatasetCard.load(repo_id, repo_type="dataset", token=token).data.to_dict()
    except (EntryNotFoundError, OSError):
        written = {}
    metadata = DatasetCardData(**(written | card.data.to_dict())).to_yaml()
    DatasetCard(f"---\n{metadata}\n---\n\n{card.text}").push_to_hub(repo_id, repo_type="dataset", token=token)
    return f"https://huggingface.co/datasets/{repo_id}"


def vlfeedback_hub_dataset(records_path: Path, image_dir: Path) -> datasets.Dataset:
    """An exported VLFeedback file as a ``datasets.Dataset`` with each record's image as an
    ``image`` column of the Image feature (embedded in the Parquet shards when pushed)."""
    records_path = Path(records_path)
    kind = "parquet" if records_path.suffix == ".parquet" else "json"
    dataset = datasets.load_dataset(kind, data_files=str(records_path), split="train")
    images = [str(Path(image_dir) / name) if name else None for name in dataset["img_path"]]
    return dataset.add_column("image", images).cast_column("image", datasets.Image())
